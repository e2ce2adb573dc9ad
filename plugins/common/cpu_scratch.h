// Temporary memory for the CPU kernels, free of ONNX Runtime types (like cpu_parallel.h).
//
// The kernels never call the heap themselves: every temporary buffer of a call comes from a Scratch
// hook that the caller provides. The ORT ops pass ONNX Runtime's CPU allocator (ort_utils.h:
// make_scratch wraps KernelContext_GetAllocator, the session's arena), so repeated runs reuse the same
// memory as ORT's own kernels do; a default-constructed Scratch (standalone callers, the C++ tests)
// uses aligned operator new.
//
//   ScratchArray<T>  one buffer for the call, freed when it goes out of scope;
//   ScratchSlots     per-task buffers for work run through Parallel::for_each: a task leases a free
//                    slot for its duration, so a call allocates one buffer per task that runs at the
//                    same time (about the number of threads), not one per task.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

namespace defmamba {

struct Scratch {
  using AllocFn = void* (*)(void* state, size_t bytes);  // returns nullptr or throws on failure
  using FreeFn = void (*)(void* state, void* p);
  AllocFn alloc = nullptr;  // nullptr: aligned operator new / delete
  FreeFn release = nullptr;
  void* state = nullptr;

  static constexpr size_t kAlign = 64;

  void* allocate(size_t bytes) const {
    if (bytes == 0) bytes = 1;
    if (alloc == nullptr) return ::operator new(bytes, std::align_val_t(kAlign));
    void* p = alloc(state, bytes);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void deallocate(void* p) const noexcept {
    if (p == nullptr) return;
    if (alloc == nullptr) {
      ::operator delete(p, std::align_val_t(kAlign));
    } else {
      release(state, p);
    }
  }
};

// n elements of a trivially copyable T from `scratch`, uninitialised unless `zero`.
template <typename T>
class ScratchArray {
 public:
  ScratchArray(const Scratch& scratch, size_t n, bool zero = false)
      : scratch_(scratch), p_(static_cast<T*>(scratch.allocate(n * sizeof(T)))) {
    if (zero) std::memset(static_cast<void*>(p_), 0, n * sizeof(T));
  }
  ~ScratchArray() { scratch_.deallocate(p_); }
  ScratchArray(const ScratchArray&) = delete;
  ScratchArray& operator=(const ScratchArray&) = delete;

  T* data() const { return p_; }
  T& operator[](size_t i) const { return p_[i]; }

 private:
  const Scratch& scratch_;
  T* p_;
};

// Up to kSlots buffers of `bytes` each, allocated on first lease (zero-filled then) and freed with the
// object. A lease holds a slot exclusively until it is destroyed; with more than kSlots tasks running
// at once the extra ones get a buffer of their own for the lease.
class ScratchSlots {
 public:
  static constexpr int kSlots = 64;

  ScratchSlots(const Scratch& scratch, size_t bytes) : scratch_(scratch), bytes_(bytes) {
    for (auto& b : buf_) b.store(nullptr, std::memory_order_relaxed);
  }
  ~ScratchSlots() {
    for (auto& b : buf_) scratch_.deallocate(b.load(std::memory_order_relaxed));
  }
  ScratchSlots(const ScratchSlots&) = delete;
  ScratchSlots& operator=(const ScratchSlots&) = delete;

  class Lease {
   public:
    ~Lease() {
      if (slot_ >= 0) {
        owner_->busy_.fetch_and(~(uint64_t{1} << slot_), std::memory_order_release);
      } else {
        owner_->scratch_.deallocate(p_);
      }
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    void* get() const { return p_; }

   private:
    friend class ScratchSlots;
    Lease(ScratchSlots* owner, int slot, void* p) : owner_(owner), slot_(slot), p_(p) {}
    ScratchSlots* owner_;
    int slot_;  // -1: a buffer of its own
    void* p_;
  };

  // A zero-filled buffer the first time a slot is used; afterwards whatever the previous lease left.
  Lease lease() {
    uint64_t busy = busy_.load(std::memory_order_relaxed);
    while (busy != ~uint64_t{0}) {
      int slot = 0;
      while ((busy >> slot) & 1u) ++slot;
      if (busy_.compare_exchange_weak(busy, busy | (uint64_t{1} << slot), std::memory_order_acquire,
                                      std::memory_order_relaxed)) {
        void* p = buf_[slot].load(std::memory_order_relaxed);
        if (p == nullptr) {  // only the holder of the slot touches buf_[slot]
          p = fresh();
          buf_[slot].store(p, std::memory_order_relaxed);
        }
        return Lease(this, slot, p);
      }
    }
    return Lease(this, -1, fresh());
  }

 private:
  void* fresh() const {
    void* p = scratch_.allocate(bytes_);
    std::memset(p, 0, bytes_);
    return p;
  }

  const Scratch& scratch_;
  size_t bytes_;
  std::atomic<uint64_t> busy_{0};
  std::atomic<void*> buf_[kSlots];
};

}  // namespace defmamba
