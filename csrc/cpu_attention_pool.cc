// The CPU attention kernel's thread pool (see cpu_attention_pool.h).
#include "cpu_attention_pool.h"

#include <unistd.h>

#include <algorithm>

namespace surge::attention {

WorkerPool& WorkerPool::global() {
  static WorkerPool* pool = new WorkerPool();
  return *pool;
}

WorkerPool::WorkerPool() : wanted_threads_(0), owner_pid_(static_cast<long>(getpid())) {}

void WorkerPool::set_num_threads(int num_threads) { wanted_threads_.store(std::max(0, num_threads)); }

int WorkerPool::num_threads() const {
  int wanted = wanted_threads_.load();
  if (wanted > 0) return wanted;
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

void WorkerPool::drain(const std::function<void(int64_t)>& body, int64_t n) {
  for (int64_t i = next_.fetch_add(1); i < n; i = next_.fetch_add(1)) body(i);
}

void WorkerPool::ensure_helpers(int count) {
  // Called with run_mutex_ held, so no job is posted while helpers start; each new
  // helper is told the current generation so it waits for the next job, not an old one.
  while (static_cast<int>(helpers_.size()) < count) {
    uint64_t generation;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      generation = generation_;
    }
    int index = static_cast<int>(helpers_.size());
    helpers_.emplace_back([this, index, generation] { helper_loop(index, generation); });
  }
}

void WorkerPool::helper_loop(int index, uint64_t seen_generation) {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    wake_.wait(lock, [&] { return generation_ != seen_generation; });
    seen_generation = generation_;
    if (!open_ || index >= participants_) continue;
    ++joined_;
    const std::function<void(int64_t)>* body = body_;
    int64_t size = size_;
    lock.unlock();
    drain(*body, size);
    lock.lock();
    if (--joined_ == 0 && !open_) done_.notify_one();
  }
}

void WorkerPool::run(int64_t n, const std::function<void(int64_t)>& body) {
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
  {
    std::lock_guard<std::mutex> lock(mutex_);
    body_ = &body;
    size_ = n;
    next_.store(0);
    participants_ = helpers;
    open_ = true;
    joined_ = 0;
    ++generation_;
  }
  wake_.notify_all();
  drain(body, n);
  std::unique_lock<std::mutex> lock(mutex_);
  open_ = false;
  done_.wait(lock, [&] { return joined_ == 0; });
  body_ = nullptr;
}

}  // namespace surge::attention
