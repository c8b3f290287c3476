// Work shared by the calling thread and XLA's intra-op thread pool, for the FFI kernels.
//
// Items [0, total) are claimed in chunks from an atomic counter. The calling thread works too
// and never waits for a task that has not started: it returns once every item is done, and a
// task that starts after that finds nothing left. Whatever the tasks touch must therefore
// outlive the call: the caller keeps it in a shared_ptr that each task's closure holds.

#ifndef ALIGNER_JAX_NATIVE_PARALLEL_H_
#define ALIGNER_JAX_NATIVE_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace aligner_native {

struct Claims {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t total = 0;
  int64_t chunk = 1;

  // The first item of a newly claimed chunk; >= total when nothing is left.
  int64_t Claim() { return next.fetch_add(chunk); }
  // The end of the chunk that starts at `first`.
  int64_t End(int64_t first) const { return std::min(total, first + chunk); }
  // Marks the chunk that starts at `first` done.
  void Finish(int64_t first) { done.fetch_add(End(first) - first); }
  int64_t Chunks() const { return (total + chunk - 1) / chunk; }
};

// Runs `work()` on the calling thread and on up to (workers - 1) pool tasks, `workers` being
// the fewest of the pool's threads, the machine's cores (XLA's pool may hold more threads than
// the machine has) and the chunks; returns once `claims` counts every item done. `work` claims
// from `claims` until nothing is left and must hold (by value) everything it touches.
template <class Work>
void RunShared(xla::ffi::ThreadPool& pool, Claims& claims, const Work& work) {
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t extra = std::min({pool.num_threads(), cores, claims.Chunks()}) - 1;
  for (int64_t i = 0; i < extra; ++i) pool.Schedule(Work(work));  // a copy per task
  work();
  while (claims.done.load() < claims.total) std::this_thread::yield();
}

}  // namespace aligner_native

#endif  // ALIGNER_JAX_NATIVE_PARALLEL_H_
