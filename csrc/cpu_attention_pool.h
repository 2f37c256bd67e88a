// A small persistent thread pool for the CPU attention kernel.
//
// In: a count n and a function of an index. Out: the function has run once for
// every index in [0, n), spread over the calling thread and sleeping helper threads
// that pick indices off a shared counter (so uneven work items balance themselves).
// The caller never waits for a helper that has not woken up yet (on a loaded machine
// it may not be scheduled for a while): helpers join a job only while it is open, and
// the caller waits only for the ones that joined. One job runs at a time; a second
// caller that finds the pool busy runs its job on its own thread instead of waiting.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace surge::attention {

class WorkerPool {
 public:
  // The process-wide pool (never destroyed: helpers may still sleep at exit).
  static WorkerPool& global();

  // Threads a job may use, the caller included; 0 means every hardware thread.
  void set_num_threads(int num_threads);
  int num_threads() const;

  // Runs body(i) for every i in [0, n) and returns when all have finished.
  void run(int64_t n, const std::function<void(int64_t)>& body);

 private:
  WorkerPool();
  void helper_loop(int index, uint64_t seen_generation);
  void drain(const std::function<void(int64_t)>& body, int64_t n);
  void ensure_helpers(int count);

  std::atomic<int> wanted_threads_;
  std::mutex run_mutex_;  // held by the caller whose job owns the helpers
  std::mutex mutex_;      // guards the job fields below
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> helpers_;
  long owner_pid_ = 0;
  uint64_t generation_ = 0;
  int participants_ = 0;  // helpers allowed to join the current job
  bool open_ = false;     // the job still takes helpers; the caller closes it once it has drained it
  int joined_ = 0;        // helpers that joined the job and have not finished yet
  const std::function<void(int64_t)>* body_ = nullptr;
  int64_t size_ = 0;
  std::atomic<int64_t> next_{0};
};

}  // namespace surge::attention
