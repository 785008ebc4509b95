// A small persistent thread pool for the CPU kernels' own loops, sized by set_cpu_threads.
// Work is split into fixed contiguous ranges, one per thread, so results never depend on timing.
#pragma once

#include <cstdint>
#include <functional>

namespace ptrain::tensor::cpu {

// Calls fn(begin, end) over [0, n) split into up to cpu_threads() contiguous ranges; the caller
// runs the first range. Runs inline when n < min_per_thread * 2, when one thread is set, when
// called from inside a parallel region, or when another caller holds the pool.
void parallel_for(int64_t n, int64_t min_per_thread,
                  const std::function<void(int64_t, int64_t)>& fn);

// Threads parallel_for would use for n items (1 when it would run inline).
int parallel_threads(int64_t n, int64_t min_per_thread);

}  // namespace ptrain::tensor::cpu
