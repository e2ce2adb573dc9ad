// A minimal parallel-for hook for the CPU kernels, free of ONNX Runtime types.
//
// The kernels call Parallel::for_each(total, f); the caller decides how the indices run: serially
// (default-constructed Parallel, used by standalone tests) or on ONNX Runtime's intra-op thread pool
// (ort_utils.h: make_parallel wraps OrtApi::KernelContext_ParallelFor). Exceptions thrown by f are
// caught on the worker, and the first one is rethrown on the calling thread after all indices ran,
// so nothing ever unwinds through the thread pool.
#pragma once

#include <cstddef>
#include <exception>
#include <mutex>
#include <type_traits>

namespace defmamba {

struct Parallel {
  // Runs task(task_state, i) for every i in [0, total), possibly concurrently.
  using RunFn = void (*)(void* runner_state, size_t total, void (*task)(void*, size_t), void* task_state);
  RunFn run = nullptr;
  void* runner_state = nullptr;

  template <typename F>
  void for_each(size_t total, F&& f) const {
    if (total == 0) return;
    if (run == nullptr || total == 1) {
      for (size_t i = 0; i < total; ++i) f(i);
      return;
    }
    struct State {
      std::remove_reference_t<F>* f;
      std::mutex mu;
      std::exception_ptr error;
    } st{&f, {}, nullptr};
    run(runner_state, total,
        [](void* p, size_t i) {
          auto* s = static_cast<State*>(p);
          try {
            (*s->f)(i);
          } catch (...) {
            std::lock_guard<std::mutex> lock(s->mu);
            if (!s->error) s->error = std::current_exception();
          }
        },
        &st);
    if (st.error) std::rethrow_exception(st.error);
  }
};

// Split [0, n) into `parts` nearly equal contiguous ranges; returns the range of part p.
inline void split_range(size_t n, size_t parts, size_t p, size_t* begin, size_t* end) {
  const size_t base = n / parts, extra = n % parts;
  *begin = p * base + (p < extra ? p : extra);
  *end = *begin + base + (p < extra ? 1 : 0);
}

// Number of tasks for `items` work items of `cost` units each: about `grain` units per task, at
// least 1 and at most `items` tasks.
inline size_t task_count(size_t items, double cost, double grain) {
  if (items == 0) return 0;
  double t = static_cast<double>(items) * cost / grain;
  if (t < 1.0) t = 1.0;
  return t > static_cast<double>(items) ? items : static_cast<size_t>(t);
}

}  // namespace defmamba
