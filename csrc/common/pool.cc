// The thread pool every CPU kernel shares (see common/pool.h).
#include "common/pool.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SURGE_MATMUL_PAUSE() _mm_pause()
#else
#define SURGE_MATMUL_PAUSE() ((void)0)
#endif

namespace surge {
namespace {

// How long a helper watches for the next job before it sleeps, and how often meanwhile it
// offers its core to other runnable threads (yielding at every check measured worse: the
// helper then often missed jobs).
constexpr auto kSpin = std::chrono::microseconds(300);
constexpr auto kYieldEvery = std::chrono::microseconds(50);
constexpr int kPausesPerCheck = 64;  // spin iterations between clock reads

// Takes m without ever sleeping for it. It is held only for a few stores at a time, and a
// thread put to sleep on a contended std::mutex wakes tens of microseconds later.
std::unique_lock<std::mutex> lock_awake(std::mutex& m) {
  while (!m.try_lock()) SURGE_MATMUL_PAUSE();
  return std::unique_lock<std::mutex>(m, std::adopt_lock);
}

}  // namespace

CpuPool& CpuPool::global() {
  static CpuPool* pool = new CpuPool();
  return *pool;
}

// hardware_concurrency() reads sysfs (about 8 us here): ask once.
CpuPool::CpuPool()
    : hardware_threads_(std::max(1, static_cast<int>(std::thread::hardware_concurrency()))),
      owner_pid_(static_cast<long>(getpid())) {}

void CpuPool::set_num_threads(int num_threads) { wanted_threads_.store(std::max(0, num_threads)); }

int CpuPool::num_threads() const {
  int wanted = wanted_threads_.load();
  return wanted > 0 ? wanted : hardware_threads_;
}

void CpuPool::drain(const std::function<void(int64_t)>& body, int64_t n) {
  for (int64_t i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) body(i);
}

void CpuPool::ensure_helpers(int count) {
  // Called with run_mutex_ held, so no job is posted while helpers start; each new helper
  // is told the current generation so it waits for the next job, not an old one.
  while (static_cast<int>(helpers_.size()) < count) {
    uint64_t generation = generation_.load();
    int index = static_cast<int>(helpers_.size());
    helpers_.emplace_back([this, index, generation] { helper_loop(index, generation); });
  }
}

bool CpuPool::wait_for_job(uint64_t seen_generation) {
  auto start = std::chrono::steady_clock::now();
  auto last_yield = start;
  while (true) {
    for (int i = 0; i < kPausesPerCheck; ++i) {
      if (generation_.load(std::memory_order_acquire) != seen_generation) return true;
      SURGE_MATMUL_PAUSE();
    }
    auto now = std::chrono::steady_clock::now();
    if (now - start > kSpin) return false;
    if (now - last_yield > kYieldEvery) {
      sched_yield();  // let anything else that is runnable have this core for a while
      last_yield = now;
    }
  }
}

void CpuPool::helper_loop(int index, uint64_t seen_generation) {
  while (true) {
    bool posted = wait_for_job(seen_generation);
    std::unique_lock<std::mutex> lock = lock_awake(mutex_);
    if (!posted) {
      ++sleepers_;
      wake_.wait(lock, [&] { return generation_.load() != seen_generation; });
      --sleepers_;
    }
    seen_generation = generation_.load();
    if (!open_ || index >= participants_) continue;
    joined_.fetch_add(1);
    const std::function<void(int64_t)>* body = body_;
    int64_t size = size_;
    lock.unlock();
    drain(*body, size);
    joined_.fetch_sub(1, std::memory_order_release);
  }
}

void CpuPool::run(int64_t n, const std::function<void(int64_t)>& body) {
  if (n <= 0) return;
  int threads = num_threads();
  // A forked child has the pool's memory but not its threads: run alone there.
  bool forked = static_cast<long>(getpid()) != owner_pid_;
  std::unique_lock<std::mutex> run_lock(run_mutex_, std::try_to_lock);
  if (threads <= 1 || n == 1 || forked || !run_lock.owns_lock()) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  int helpers = static_cast<int>(std::min<int64_t>(threads - 1, n - 1));
  ensure_helpers(helpers);
  bool wake;
  {
    auto lock = lock_awake(mutex_);
    body_ = &body;
    size_ = n;
    next_.store(0);
    participants_ = helpers;
    open_ = true;
    generation_.fetch_add(1, std::memory_order_release);
    wake = sleepers_ > 0;
  }
  if (wake) wake_.notify_all();
  drain(body, n);
  {
    auto lock = lock_awake(mutex_);
    open_ = false;  // from here no helper joins, so joined_ only falls
  }
  // The helpers still inside are finishing their last item: wait for them awake, since
  // sleeping here would cost a wake-up as long as the item (and could let this thread
  // be woken onto the helper's core).
  for (int spins = 1; joined_.load(std::memory_order_acquire) != 0; ++spins) {
    SURGE_MATMUL_PAUSE();
    if (spins % (16 * kPausesPerCheck) == 0) sched_yield();  // a helper preempted here can run
  }
  body_ = nullptr;
}

}  // namespace surge
