// The persistent thread pool every CPU kernel shares (matmul, attention, SiLU-and-multiply): helpers that spin briefly before sleeping.
//
// In: a count n and a function of an index. Out: the function has run once for every
// index in [0, n), spread over the calling thread and the helper threads, which claim
// indices from a shared counter (uneven items balance themselves).
// Why not only sleep on a condition variable: waking a sleeping thread takes 20-50 us
// on the machines surge targets, as long as a whole one-token matmul. A decode step calls a
// kernel every few tens of microseconds, so after each job the helpers watch for the
// next one for kSpinMicros (yielding the core to anything else runnable) and only then
// sleep. The caller never waits for a helper that has not joined: helpers join a job only
// while it is open, and the caller waits (awake) only for those that joined. One job runs
// at a time; a second caller that finds the pool busy runs its job on its own thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace surge {

class CpuPool {
 public:
  // The process-wide pool (never destroyed: helpers may still sleep at exit).
  static CpuPool& global();

  // Threads a job may use, the caller included; 0 means every hardware thread.
  void set_num_threads(int num_threads);
  int num_threads() const;

  // Runs body(i) for every i in [0, n) and returns when all have finished.
  void run(int64_t n, const std::function<void(int64_t)>& body);

 private:
  CpuPool();
  void helper_loop(int index, uint64_t seen_generation);
  bool wait_for_job(uint64_t seen_generation);  // true once generation_ moved past it
  void drain(const std::function<void(int64_t)>& body, int64_t n);
  void ensure_helpers(int count);

  const int hardware_threads_;
  std::atomic<int> wanted_threads_{0};
  std::mutex run_mutex_;  // held by the caller whose job owns the helpers
  std::mutex mutex_;      // guards the job fields below
  std::condition_variable wake_;
  std::vector<std::thread> helpers_;
  long owner_pid_ = 0;
  std::atomic<uint64_t> generation_{0};  // bumped (under mutex_) when a job is posted
  int sleepers_ = 0;      // helpers blocked on wake_
  int participants_ = 0;  // helpers allowed to join the current job
  bool open_ = false;     // the job still takes helpers; the caller closes it once drained
  std::atomic<int> joined_{0};  // helpers that joined the job and have not finished yet
  const std::function<void(int64_t)>* body_ = nullptr;
  int64_t size_ = 0;
  std::atomic<int64_t> next_{0};
};

}  // namespace surge
