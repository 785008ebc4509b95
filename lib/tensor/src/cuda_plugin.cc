// Finds and loads libptrain_cuda.so (see cuda_plugin.h), and the tensor module's CUDA entry points
// (cuda/cuda_ops.h) that forward to it.
#include "ptrain/tensor/cuda_plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <mutex>
#include <system_error>
#include <vector>

#include "ptrain/core/env.h"
#include "ptrain/core/log.h"
#include "ptrain/core/time.h"
#include "ptrain/tensor/ops.h"

#ifdef PTRAIN_WITH_CUDA
#include "cuda/cuda_ops.h"
#endif

namespace ptrain::tensor {
namespace {

namespace fs = std::filesystem;

constexpr const char* kPluginFile = "libptrain_cuda.so";

fs::path exe_dir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

std::vector<fs::path> candidates() {
  std::vector<fs::path> out;
  if (auto explicit_path = env_get("PTRAIN_CUDA_PLUGIN")) {
    out.emplace_back(*explicit_path);
    return out;  // an explicit choice is never second-guessed
  }
  fs::path dir = exe_dir();
  if (!dir.empty()) {
    out.push_back(dir / ".." / "lib" / kPluginFile);         // bundle: libexec/ptrain
    out.push_back(dir / ".." / ".." / "lib" / kPluginFile);  // bundle: bin/tests/*
    out.push_back(dir / kPluginFile);
  }
#ifdef PTRAIN_CUDA_PLUGIN_BUILD_PATH
  out.emplace_back(PTRAIN_CUDA_PLUGIN_BUILD_PATH);  // binaries run from the build tree
#endif
  return out;
}

struct Plugin {
  void* handle = nullptr;
  std::string error;
};

Plugin load() {
  Plugin p;
  if (!cuda_plugin_built()) {
    p.error = "ptrain was built without CUDA (no CUDA toolkit at build time)";
    return p;
  }
  std::string path = cuda_plugin_path();
  if (path.empty()) {
    std::string looked;
    for (const auto& c : candidates()) looked += (looked.empty() ? "" : ", ") + c.string();
    p.error = fmt::format("the CUDA plugin {} was not found (looked in: {})", kPluginFile, looked);
    return p;
  }
  auto start = Clock::now();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* why = dlerror();
    p.error = fmt::format("cannot load the CUDA plugin {}: {}", path, why ? why : "unknown error");
    return p;
  }
  auto abi = reinterpret_cast<int (*)()>(dlsym(handle, "ptrain_cuda_plugin_abi"));
  auto ops_size = reinterpret_cast<size_t (*)()>(dlsym(handle, "ptrain_cuda_ops_size"));
  if (!abi || !ops_size) {
    p.error = fmt::format(
        "{} is not a ptrain CUDA plugin (it has no ptrain_cuda_plugin_abi entry "
        "point); point PTRAIN_CUDA_PLUGIN at libptrain_cuda.so or unset it",
        path);
    dlclose(handle);
    return p;
  }
  if (abi() != kCudaPluginAbi || ops_size() != sizeof(Ops)) {
    p.error = fmt::format(
        "the CUDA plugin {} is from another ptrain build (abi {}, op table {} bytes; this binary "
        "expects abi {}, {} bytes): rebuild it or point PTRAIN_CUDA_PLUGIN at the matching one",
        path, abi(), ops_size(), kCudaPluginAbi, sizeof(Ops));
    dlclose(handle);
    return p;
  }
  spdlog::debug("loaded the CUDA plugin {} in {:.1f} ms", path,
                std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  p.handle = handle;
  return p;
}

std::once_flag g_once;
Plugin g_plugin;

const Plugin& plugin() {
  std::call_once(g_once, [] { g_plugin = load(); });
  return g_plugin;
}

}  // namespace

bool cuda_plugin_built() {
#ifdef PTRAIN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string cuda_plugin_path() {
  if (!cuda_plugin_built()) return "";
  for (const auto& c : candidates()) {
    std::error_code ec;
    if (fs::is_regular_file(c, ec)) return fs::weakly_canonical(c, ec).string();
  }
  return "";
}

void* cuda_plugin_symbol(const char* name) {
  const Plugin& p = plugin();
  return p.handle ? dlsym(p.handle, name) : nullptr;
}

std::string cuda_plugin_error() {
  return plugin().error;
}

std::string cuda_unavailable_reason() {
#ifdef PTRAIN_WITH_CUDA
  return cuda::unavailable_reason();
#else
  return plugin().error;
#endif
}

#ifdef PTRAIN_WITH_CUDA
namespace cuda {

const Ops* get_ops() {
  static const Ops* table = [] {
    auto fn = reinterpret_cast<const Ops* (*)()>(cuda_plugin_symbol("ptrain_cuda_get_ops"));
    if (!fn) {
      spdlog::debug("CUDA backend unavailable: {}", cuda_plugin_error());
      return static_cast<const Ops*>(nullptr);
    }
    return fn();
  }();
  return table;
}

std::string unavailable_reason() {
  get_ops();
  const std::string& load_error = plugin().error;
  if (!load_error.empty()) return load_error;
  auto fn = reinterpret_cast<void (*)(std::string*)>(
      cuda_plugin_symbol("ptrain_cuda_unavailable_reason"));
  std::string reason;
  if (fn) fn(&reason);
  return reason;
}

int device_index() {
  auto fn = reinterpret_cast<int (*)()>(cuda_plugin_symbol("ptrain_cuda_device_index"));
  return fn ? fn() : -1;
}

}  // namespace cuda
#endif

}  // namespace ptrain::tensor
