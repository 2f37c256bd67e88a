// The CPU matmul for weights packed into panels (see cpu_matmul.h).
//
// In: x [M, K] float32 and W packed as panels of 24 columns, each [K, width] contiguous,
// float32 or bfloat16 (widened in registers). Out: y [M, N] = x @ W.
// A work item is a run of whole panels: its thread reads them as one contiguous stream,
// which is what a one-row step needs (it is bound by memory bandwidth). Each panel is
// multiplied by every row tile of x (up to 4 rows x 24 columns = 12 accumulators) over
// the whole of K before the next: the panel is read from memory once and from L2 by the
// other row tiles, and y is written once per tile, never re-read.
#include <array>
#include <type_traits>
#include <utility>

#include "cpu_matmul_tiles.h"
#include "cpu_matmul_work.h"

namespace surge::matmul {
namespace {

constexpr int kMaxRows = 4;
constexpr int kPanelVectors = kPanelColumns / 8;

template <typename W>
using Tile = void (*)(const float*, int64_t, const W*, int64_t, int64_t, float*, int64_t, int, bool);

template <typename W, int MR, int... V>
constexpr std::array<Tile<W>, sizeof...(V)> tile_row(std::integer_sequence<int, V...>) {
  // One accumulator set whatever the height: every row of y is summed in the same order
  // however many rows share its tile, so a sequence's result does not depend on its batch.
  return {&kn_tile<MR, V + 1, 1, W>...};
}

// tiles<W>[rows - 1][vectors - 1]: rows x (8 * vectors) columns.
template <typename W>
const std::array<std::array<Tile<W>, kPanelVectors>, kMaxRows> tiles = {
    tile_row<W, 1>(std::make_integer_sequence<int, kPanelVectors>()),
    tile_row<W, 2>(std::make_integer_sequence<int, kPanelVectors>()),
    tile_row<W, 3>(std::make_integer_sequence<int, kPanelVectors>()),
    tile_row<W, 4>(std::make_integer_sequence<int, kPanelVectors>()),
};

// The panel's row tiles over the whole of K, reading the panel as stored (type T).
template <typename T>
void multiply_panel(const MatmulProblem& p, const RowTiles& rows, const T* panel, int64_t n0, int width) {
  for (int64_t t = 0; t < rows.count; ++t) {
    int64_t m0 = rows.start(t);
    tiles<T>[rows.rows(t) - 1][width / 8 - 1](p.x + m0 * p.k, p.k, panel, width, p.k, p.y + m0 * p.n + n0, p.n,
                                              width, false);
  }
}

template <typename W>
void run(const MatmulProblem& p) {
  const W* w = static_cast<const W*>(p.w);
  RowTiles rows(p.m, kMaxRows);
  int64_t num_panels = ceil_div(p.n, kPanelColumns);
  // bfloat16 widened in registers costs two more instructions per 8 weights on every
  // pass: with several row tiles the panel is widened once into a float32 copy (in L2)
  // that they all read. Same products, same order: results do not change.
  const bool widen_once = std::is_same_v<W, uint16_t> && rows.count > 1;
  run_blocks(num_panels, num_panels, 2.0 * p.m * p.n * p.k, [&](int64_t begin, int64_t end) {
    float* wide = widen_once ? scratch(p.k * kPanelColumns) : nullptr;
    for (int64_t j = begin; j < end; ++j) {
      int64_t n0 = j * kPanelColumns;
      int width = static_cast<int>(std::min(kPanelColumns, p.n - n0));
      const W* panel = w + n0 * p.k;
      if constexpr (std::is_same_v<W, uint16_t>) {
        if (widen_once) {
          attention::bf16_row_to_f32(panel, wide, p.k * width);
          multiply_panel<float>(p, rows, wide, n0, width);
          continue;
        }
      }
      multiply_panel<W>(p, rows, panel, n0, width);
    }
  });
}

}  // namespace

void matmul_panels(const MatmulProblem& p) {
  if (p.w_type == WeightType::kBFloat16) {
    run<uint16_t>(p);
  } else {
    run<float>(p);
  }
}

}  // namespace surge::matmul
