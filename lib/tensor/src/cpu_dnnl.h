// What the oneDNN users of the CPU table share (cpu_gemm.cc's matmuls, cpu_conv.cc's
// convolutions, cpu_bn_pool.cc's batch norms and poolings): one CPU engine for the process, the
// OpenMP team size oneDNN runs with, and the host buffers operands and scratchpads live in.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"

namespace ptrain::tensor::cpu {

dnnl::engine& dnnl_engine();

// oneDNN runs on OpenMP here: the calling thread's team size is what a primitive is created for
// and executed with.
void set_omp_threads(int threads);

// A 64-byte aligned host buffer that only grows (an IoError when memory runs out).
class DnnlBuffer {
 public:
  DnnlBuffer() = default;
  DnnlBuffer(const DnnlBuffer&) = delete;
  DnnlBuffer& operator=(const DnnlBuffer&) = delete;
  ~DnnlBuffer();
  void* get(size_t bytes);

 private:
  void* p_ = nullptr;
  size_t size_ = 0;
};

// The process's primitives of one kind, created once per key by `Create`. Creation runs outside
// the lock (it can take milliseconds); a racing thread's copy is dropped.
template <class Key, class Value, class Hash, std::shared_ptr<const Value> (*Create)(const Key&)>
class PrimitiveCache {
 public:
  std::shared_ptr<const Value> get(const Key& k) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = map_.find(k);
      if (it != map_.end()) return it->second;
    }
    auto p = Create(k);
    std::lock_guard<std::mutex> lock(mu_);
    return map_.emplace(k, std::move(p)).first->second;
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return map_.size();
  }

 private:
  std::mutex mu_;
  std::unordered_map<Key, std::shared_ptr<const Value>, Hash> map_;
};

}  // namespace ptrain::tensor::cpu
