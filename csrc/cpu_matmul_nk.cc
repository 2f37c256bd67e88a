// The CPU matmul for weights stored [N, K] (see cpu_matmul.h): y = x @ W^T, as for a
// tied lm_head that reads the [vocab, hidden] embedding table in place.
//
// In: x [M, K], W [N, K] float32 or bfloat16. Out: y [M, N], y[m, n] = x_m . W_n.
// A work item is a block of W's rows (y's columns). Each row of W is contiguous, so
// tiles of up to 3 rows of x by 4 rows of W (8 when M = 1) take dot products along K
// with accumulators of 8 lanes, summed across lanes at the end; W streams through in
// long runs. With bfloat16 and several row tiles the block is first widened to float32
// once, into a buffer that stays in L2, instead of once per row tile.
#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>

#include "cpu_matmul_tiles.h"
#include "cpu_matmul_work.h"

namespace surge::matmul {
namespace {

constexpr int64_t kMaxRowsPerItem = 128;          // rows of W in a work item ...
constexpr int64_t kMaxWidenedBytes = 256 * 1024;  // ... fewer if its widened copy would leave L2
constexpr int64_t kWidenMinRowTiles = 3;          // bfloat16: widen a block once from this many row tiles

template <typename W>
using Tile = void (*)(const float*, int64_t, const W*, int64_t, int64_t, float*, int64_t);

template <typename W, int MR, int... C>
constexpr std::array<Tile<W>, sizeof...(C)> tile_row(std::integer_sequence<int, C...>) {
  return {&nk_tile<MR, C + 1, W>...};
}

// One row of x: single_row_tiles<W>[w_rows - 1] for 1..8 rows of W (8 accumulators at most).
template <typename W>
constexpr std::array<Tile<W>, 8> single_row_tiles = tile_row<W, 1>(std::make_integer_sequence<int, 8>());

// Several rows of x: tiles<W>[rows - 1][w_rows - 1] for 1..3 rows of x by 1..4 rows of W.
template <typename W>
constexpr std::array<std::array<Tile<W>, 4>, 3> tiles = {tile_row<W, 1>(std::make_integer_sequence<int, 4>()),
                                                         tile_row<W, 2>(std::make_integer_sequence<int, 4>()),
                                                         tile_row<W, 3>(std::make_integer_sequence<int, 4>())};

// y[:, n0:n1] from W's rows n0..n1, which start at `w`, `group` rows at a time.
template <typename W>
void rows_block(const MatmulProblem& p, const W* w, int64_t n0, int64_t n1, int64_t group) {
  RowTiles row_tiles(p.m, 3);
  for (int64_t c = n0; c < n1; c += group) {
    int64_t count = std::min(group, n1 - c);
    const W* w_rows = w + (c - n0) * p.k;
    if (p.m == 1) {
      single_row_tiles<W>[count - 1](p.x, p.k, w_rows, p.k, p.k, p.y + c, p.n);
      continue;
    }
    for (int64_t t = 0; t < row_tiles.count; ++t) {
      int64_t m0 = row_tiles.start(t);
      tiles<W>[row_tiles.rows(t) - 1][count - 1](p.x + m0 * p.k, p.k, w_rows, p.k, p.k, p.y + m0 * p.n + c, p.n);
    }
  }
}

template <typename W>
void run(const MatmulProblem& p) {
  const W* w = static_cast<const W*>(p.w);
  int64_t group = p.m == 1 ? 8 : 4;
  bool widen_once = std::is_same_v<W, uint16_t> && RowTiles(p.m, 3).count >= kWidenMinRowTiles;
  int64_t max_rows = std::clamp<int64_t>(kMaxWidenedBytes / (4 * p.k), group, kMaxRowsPerItem);
  run_blocks(ceil_div(p.n, group), max_rows / group, 2.0 * p.m * p.n * p.k, [&](int64_t begin, int64_t end) {
    int64_t n0 = begin * group;
    int64_t n1 = std::min(p.n, end * group);
    const W* block = w + n0 * p.k;
    if constexpr (std::is_same_v<W, uint16_t>) {
      if (widen_once) {
        float* wide = scratch((n1 - n0) * p.k);
        attention::bf16_row_to_f32(block, wide, (n1 - n0) * p.k);
        rows_block<float>(p, wide, n0, n1, group);
        return;
      }
    }
    rows_block<W>(p, block, n0, n1, group);
  });
}

}  // namespace

void matmul_nk(const MatmulProblem& p) {
  if (p.w_type == WeightType::kBFloat16) {
    run<uint16_t>(p);
  } else {
    run<float>(p);
  }
}

}  // namespace surge::matmul
