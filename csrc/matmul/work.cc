// Work splitting of the CPU matmul and its entry point (see matmul/work.h).
#include "matmul/work.h"

#include <algorithm>
#include <vector>

#include "cpu/isa.h"
#include "common/pool.h"

namespace surge::matmul {
namespace {

// Enough items per thread that one slow or late thread (the machine is shared, and a
// sleeping helper takes a while to wake) leaves little for the others to wait on.
constexpr int64_t kItemsPerThread = 4;
// Below this much work (a few microseconds on one core) handing out items costs more than
// a helper saves.
constexpr double kMinParallelFlops = 2e5;

}  // namespace

float* scratch(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

float* panel_scratch(int64_t floats) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < floats) buffer.resize(floats);
  return buffer.data();
}

void run_blocks(int64_t units, int64_t max_units_per_item, double flops,
                const std::function<void(int64_t, int64_t)>& block) {
  if (units <= 0) return;
  auto& pool = CpuPool::global();
  int64_t threads = flops < kMinParallelFlops ? 1 : pool.num_threads();
  int64_t per_item = std::clamp<int64_t>(ceil_div(units, threads * kItemsPerThread), 1, max_units_per_item);
  int64_t items = ceil_div(units, per_item);
  if (threads == 1) {
    for (int64_t i = 0; i < items; ++i) block(i * per_item, std::min(units, (i + 1) * per_item));
    return;
  }
  pool.run(items, [&](int64_t i) { block(i * per_item, std::min(units, (i + 1) * per_item)); });
}

void matmul(const MatmulProblem& p) {
  if (p.m <= 0 || p.n <= 0) return;
  if (p.k <= 0) {
    std::fill(p.y, p.y + p.m * p.n, 0.0f);
    return;
  }
  cpu::kernels().matmul(p);
}

}  // namespace surge::matmul
