// The CPU kernels take every temporary buffer from the Scratch hook (cpu_scratch.h), none from the
// heap: this binary replaces the global operator new to count heap allocations made during a kernel
// call, runs each kernel serially and on a small thread pool with a counting Scratch, and checks that
// the heap saw nothing, that every scratch buffer was given back, that the per-task buffers number
// at most one per concurrently running task, and that the results equal those of the default Scratch.
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#include "deform_gather/cpu_kernel.h"
#include "selective_scan/cpu_kernel.h"
#include "token_sort/cpu_kernel.h"

#include "expect.h"

using namespace defmamba;
namespace dm = defmamba::math;

// ---- heap allocations, counted while g_counting is set ---------------------------------------------
static std::atomic<bool> g_counting{false};
static std::atomic<long> g_heap_allocs{0};

static void* counted_malloc(size_t n, size_t align) {
  if (g_counting.load(std::memory_order_relaxed)) g_heap_allocs.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  void* p = align <= alignof(std::max_align_t) ? std::malloc(n) : std::aligned_alloc(align, (n + align - 1) / align * align);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void* operator new(size_t n) { return counted_malloc(n, 0); }
void* operator new[](size_t n) { return counted_malloc(n, 0); }
void* operator new(size_t n, std::align_val_t a) { return counted_malloc(n, static_cast<size_t>(a)); }
void* operator new[](size_t n, std::align_val_t a) { return counted_malloc(n, static_cast<size_t>(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t, std::align_val_t) noexcept { std::free(p); }

// ---- a Scratch that counts its buffers (malloc, not operator new: not counted as heap) ----------------
struct CountingScratch {
  std::atomic<long> allocs{0}, frees{0};
  Scratch hook;
  CountingScratch() {
    hook.state = this;
    hook.alloc = [](void* st, size_t n) -> void* {
      static_cast<CountingScratch*>(st)->allocs.fetch_add(1);
      return std::aligned_alloc(64, (n + 63) / 64 * 64);
    };
    hook.release = [](void* st, void* p) {
      static_cast<CountingScratch*>(st)->frees.fetch_add(1);
      std::free(p);
    };
  }
};

// ---- a fixed pool of worker threads behind Parallel (the caller works too); no allocation per run ----
class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { work(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int concurrency() const { return static_cast<int>(threads_.size()) + 1; }
  Parallel parallel() {
    Parallel p;
    p.runner_state = this;
    p.run = [](void* st, size_t total, void (*task)(void*, size_t), void* task_state) {
      static_cast<Pool*>(st)->run(total, task, task_state);
    };
    return p;
  }

 private:
  void run(size_t total, void (*task)(void*, size_t), void* task_state) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      task_ = task;
      task_state_ = task_state;
      total_ = total;
      next_.store(0);
      done_.store(0);
      ++generation_;
    }
    cv_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return done_.load() == total_; });
  }
  void drain() {
    for (size_t i; (i = next_.fetch_add(1)) < total_;) {
      task_(task_state_, i);
      if (done_.fetch_add(1) + 1 == total_) {
        std::lock_guard<std::mutex> lock(mu_);
        done_cv_.notify_all();
      }
    }
  }
  void work() {
    long seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
      }
      drain();
    }
  }
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  long generation_ = 0;
  bool stop_ = false;
  void (*task_)(void*, size_t) = nullptr;
  void* task_state_ = nullptr;
  size_t total_ = 0;
  std::atomic<size_t> next_{0}, done_{0};
};

// Runs fn(parallel, scratch) with the counting scratch and heap counting on; checks the counts.
template <typename F>
static void check_call(const char* what, const Parallel& par, long max_buffers, F&& fn) {
  CountingScratch cs;
  g_heap_allocs.store(0);
  g_counting.store(true);
  fn(par, cs.hook);
  g_counting.store(false);
  const long heap = g_heap_allocs.load(), allocs = cs.allocs.load(), frees = cs.frees.load();
  std::printf("%-44s scratch buffers %ld (bound %ld), heap allocations %ld\n", what, allocs, max_buffers, heap);
  EXPECT(heap == 0, "%s: %ld heap allocations during the call (everything should come from the Scratch)", what, heap);
  EXPECT(allocs >= 1 && allocs <= max_buffers, "%s: %ld scratch buffers, expected 1..%ld", what, allocs, max_buffers);
  EXPECT(frees == allocs, "%s: %ld scratch buffers allocated but %ld given back", what, allocs, frees);
}

template <typename T>
static std::vector<T> randn(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> nd;
  std::vector<T> v(n);
  for (auto& x : v) {
    if constexpr (std::is_same<T, double>::value) {
      x = static_cast<double>(scale * nd(rng));
    } else {
      x = dm::from_f32<T>(scale * nd(rng));
    }
  }
  return v;
}

template <typename T>
static void scan_case(Pool& pool, std::mt19937& rng) {
  const int64_t Bt = 2, Ch = 96, G = 3, N = 16, L = 1500;  // 6 channel blocks, one task each
  const auto u = randn<T>(Bt * Ch * L, rng), dl = randn<T>(Bt * Ch * L, rng, 0.5f);
  const auto B = randn<T>(Bt * G * N * L, rng), C = randn<T>(Bt * G * N * L, rng);
  std::vector<float> A(Ch * N), D(Ch), db(Ch);
  for (size_t i = 0; i < A.size(); ++i) A[i] = -static_cast<float>(1 + i % N);
  for (auto& v : D) v = 1.0f;
  for (auto& v : db) v = -2.0f;
  const SelectiveScanShape s{Bt, Ch, G, N, L, 0b010};
  std::vector<T> ref(Bt * Ch * L), out(Bt * Ch * L);
  selective_scan_cpu<T>(s, u.data(), dl.data(), A.data(), B.data(), C.data(), D.data(), db.data(), true, ref.data());
  for (int threaded = 0; threaded < 2; ++threaded) {
    const Parallel par = threaded ? pool.parallel() : Parallel{};
    const long bound = 1 + (threaded ? pool.concurrency() : 1);  // B/C buffer + one per running task
    std::fill(out.begin(), out.end(), dm::from_f32<T>(0.0f));
    check_call(threaded ? "selective_scan (thread pool)" : "selective_scan (serial)", par, bound,
               [&](const Parallel& p, const Scratch& sc) {
                 selective_scan_cpu<T>(s, u.data(), dl.data(), A.data(), B.data(), C.data(), D.data(), db.data(), true,
                                       out.data(), p, sc);
               });
    EXPECT(std::memcmp(ref.data(), out.data(), out.size() * sizeof(T)) == 0,
           "selective_scan: results with the counting Scratch differ from the default Scratch's");
  }
}

static void gather_case(Pool& pool, std::mt19937& rng) {
  const int64_t Bt = 2, Ch = 40, H = 13, W = 17, K = 3, Th = 7, Tw = 7;
  const auto x = randn<float>(Bt * Ch * H * W, rng), off = randn<float>(Bt * K * H * W, rng, 2.0f);
  const auto tab = randn<float>(Ch * Th * Tw, rng);
  const DeformGatherShape s{Bt, Ch, H, W, K, Th, Tw};
  std::vector<float> ref(Bt * Ch * H * W), out(Bt * Ch * H * W);
  deform_gather_cpu<float>(s, x.data(), off.data(), tab.data(), ref.data());
  for (int threaded = 0; threaded < 2; ++threaded) {
    const Parallel par = threaded ? pool.parallel() : Parallel{};
    check_call(threaded ? "deform_gather (thread pool)" : "deform_gather (serial)", par, 5,
               [&](const Parallel& p, const Scratch& sc) {
                 deform_gather_cpu<float>(s, x.data(), off.data(), tab.data(), out.data(), p, sc);
               });
    EXPECT(std::memcmp(ref.data(), out.data(), out.size() * sizeof(float)) == 0,
           "deform_gather: results with the counting Scratch differ from the default Scratch's");
  }
}

template <typename T>
static void sort_case(Pool& pool, std::mt19937& rng, int64_t L) {
  const int64_t Bt = 7;
  const auto x = randn<T>(Bt * L, rng);
  std::vector<int64_t> rp(Bt * L), ri(Bt * L), p(Bt * L), i(Bt * L);
  token_sort_cpu<T>(Bt, L, x.data(), rp.data(), ri.data());
  for (int threaded = 0; threaded < 2; ++threaded) {
    const Parallel par = threaded ? pool.parallel() : Parallel{};
    check_call(threaded ? "token_sort (thread pool)" : "token_sort (serial)", par, threaded ? pool.concurrency() : 1,
               [&](const Parallel& pp, const Scratch& sc) {
                 token_sort_cpu<T>(Bt, L, x.data(), p.data(), i.data(), pp, sc);
               });
    EXPECT(p == rp && i == ri, "token_sort: results with the counting Scratch differ from the default Scratch's");
  }
}

static void slots_case() {
  CountingScratch cs;
  {
    ScratchSlots slots(cs.hook, 256);
    void* first;
    {
      ScratchSlots::Lease a = slots.lease();
      ScratchSlots::Lease b = slots.lease();
      EXPECT(a.get() != b.get(), "two leases held at once share a buffer");
      bool zero = true;
      for (int k = 0; k < 256; ++k) zero = zero && static_cast<unsigned char*>(a.get())[k] == 0;
      EXPECT(zero, "a new slot's buffer is not zero-filled");
      std::memset(a.get(), 7, 256);
      first = a.get();
    }
    {
      ScratchSlots::Lease c = slots.lease();
      EXPECT(c.get() == first && static_cast<unsigned char*>(c.get())[0] == 7,
             "a released slot is not reused as it was left");
    }
    std::vector<ScratchSlots::Lease*> held;
    for (int k = 0; k < ScratchSlots::kSlots + 3; ++k) held.push_back(new ScratchSlots::Lease(slots.lease()));
    EXPECT(cs.allocs.load() == ScratchSlots::kSlots + 3, "slots: %ld buffers for %d leases held at once",
           cs.allocs.load(), ScratchSlots::kSlots + 3);
    for (auto* l : held) delete l;
    EXPECT(cs.frees.load() == 3, "slots: the 3 leases beyond the slots should free their own buffers (freed %ld)",
           cs.frees.load());
  }
  EXPECT(cs.frees.load() == cs.allocs.load(), "slots: %ld buffers, %ld freed", cs.allocs.load(), cs.frees.load());
}

// The counter sees heap allocations at all: the default Scratch (the heap) is counted.
static void counter_case() {
  const int64_t Bt = 1, L = 500;
  std::vector<float> x(Bt * L, 0.5f);
  std::vector<int64_t> p(Bt * L), i(Bt * L);
  g_heap_allocs.store(0);
  g_counting.store(true);
  token_sort_cpu<float>(Bt, L, x.data(), p.data(), i.data());
  g_counting.store(false);
  EXPECT(g_heap_allocs.load() >= 1, "the heap counter saw no allocation from the default (heap) Scratch");
}

int main() {
  std::mt19937 rng(99);
  Pool pool(2);
  counter_case();
  slots_case();
  scan_case<float>(pool, rng);
  scan_case<Half>(pool, rng);
  gather_case(pool, rng);
  sort_case<float>(pool, rng, 1500);  // radix sort
  sort_case<float>(pool, rng, 20);    // insertion sort
  sort_case<double>(pool, rng, 700);
  if (g_failures) {
    std::fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("all scratch tests passed\n");
  return 0;
}
