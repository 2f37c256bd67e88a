// How the CPU matmul cuts its work (internal to cpu_matmul_*.cc).
//
// In: problem sizes. Out: row tiles of x, per-thread scratch buffers, and run_blocks(),
// which spreads blocks of y's columns over CpuPool::global() (a block belongs to one
// thread, so no partial sums are ever combined and results do not depend on threads).
// Shared by every kernel variant (compiled for the build's baseline).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>

#include "matmul/panels.h"

namespace surge::matmul {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// M rows cut into `count` tiles of nearly equal height, none taller than max_rows
// (33 rows in tiles of 4 at most: six of 4 and three of 3, not eight of 4 and one of 1).
struct RowTiles {
  int64_t count, base, extra;
  RowTiles(int64_t m, int64_t max_rows)
      : count(ceil_div(m, max_rows)), base(count ? m / count : 0), extra(count ? m % count : 0) {}
  int64_t rows(int64_t t) const { return base + (t < extra ? 1 : 0); }
  int64_t start(int64_t t) const { return t * base + std::min(t, extra); }
};

// A float32 buffer of at least `floats` owned by the calling thread, reused across calls.
float* scratch(int64_t floats);
// A second such buffer, for what a work item packs while the caller's scratch() holds its inputs
// (the caller's thread runs work items too).
float* panel_scratch(int64_t floats);

// Runs block(begin, end) over [0, units) cut into work items of at most
// max_units_per_item units, on the pool; `flops` decides whether helpers are worth waking.
void run_blocks(int64_t units, int64_t max_units_per_item, double flops,
                const std::function<void(int64_t, int64_t)>& block);

}  // namespace surge::matmul
