// The CPU matmul for weights stored [K, N] (see cpu_matmul.h).
//
// In: x [M, K], W [K, N] float32 or bfloat16. Out: y [M, N] = x @ W.
// A work item is a strip of y's columns. Two ways through it:
// - direct (few rows, memory-bound): W is read in place, bfloat16 widened in registers.
//   The strip walks K a few rows at a time and, per slice, every tile of the strip, so
//   each row of W is read as one long run of bytes (what prefetchers stream best) while
//   the strip of y, updated once per slice, stays in L1; the row tiles of x (up to 4
//   rows each) take turns on each slice of a tile, the second and later from L1.
// - packed (more rows): per slice of kDepth rows of K, the strip of W is copied
//   (widened to float32) into a buffer whose row stride avoids cache-set conflicts,
//   then every row tile of x runs over each 24-column panel while it sits in L1; the
//   next slice is requested from memory meanwhile, so the copy does not wait for it.
#include <algorithm>
#include <array>
#include <utility>

#include "cpu_matmul_tiles.h"
#include "cpu_matmul_work.h"

namespace surge::matmul {
namespace {

constexpr int64_t kMaxDirectRows = 4;            // direct up to here whatever N is ...
constexpr int64_t kMaxDirectRowsUnaliased = 16;  // ... and up to here unless rows of W alias in L1
constexpr int64_t kAliasingStrideBytes = 1024;   // (row strides of a multiple of this do)
constexpr int64_t kDirectDepth = 16;           // rows of W per slice, direct
constexpr int64_t kDirectStripFloats = 4096;   // y floats of a direct strip (16 KiB, in L1)
constexpr int64_t kPanelWidth = 24;            // columns of a packed tile: 3 vectors of 8
constexpr int64_t kDepth = 64;                 // rows of W per packed slice
constexpr int64_t kPackedBytes = 192 * 1024;   // a packed slice of a strip stays in L2 ...
constexpr int64_t kStripBytes = 128 * 1024;    // ... next to the strip's M rows of y

template <typename W>
using Tile = void (*)(const float*, int64_t, const W*, int64_t, int64_t, float*, int64_t, int, bool);

template <typename W, int MR, int... V>
constexpr std::array<Tile<W>, sizeof...(V)> tile_row(std::integer_sequence<int, V...>) {
  // A narrow tile has few accumulators: it takes alternate k in two sets to keep FMAs in flight.
  return {&kn_tile<MR, V + 1, (MR * (V + 1) < 6 ? 2 : 1), W>...};
}

// direct_tiles<W>[rows - 1][vectors - 1]: rows x vectors-of-8 tiles, 12 accumulators at most.
template <typename W>
const std::array<std::array<Tile<W>, 12>, 4> direct_tiles = [] {
  std::array<std::array<Tile<W>, 12>, 4> table{};
  auto r1 = tile_row<W, 1>(std::make_integer_sequence<int, 12>());
  auto r2 = tile_row<W, 2>(std::make_integer_sequence<int, 6>());
  auto r3 = tile_row<W, 3>(std::make_integer_sequence<int, 4>());
  auto r4 = tile_row<W, 4>(std::make_integer_sequence<int, 3>());
  std::copy(r1.begin(), r1.end(), table[0].begin());
  std::copy(r2.begin(), r2.end(), table[1].begin());
  std::copy(r3.begin(), r3.end(), table[2].begin());
  std::copy(r4.begin(), r4.end(), table[3].begin());
  return table;
}();

// packed_tiles[rows - 1]: up to 4 rows x one 24-column panel of packed float32.
const std::array<Tile<float>, 4> packed_tiles = {&kn_tile<1, 3, 2, float>, &kn_tile<2, 3, 1, float>,
                                                 &kn_tile<3, 3, 1, float>, &kn_tile<4, 3, 1, float>};

template <typename W>
void direct(const MatmulProblem& p) {
  const W* w = static_cast<const W*>(p.w);
  RowTiles rows(p.m, kMaxDirectRows);
  int64_t tile_vectors = 12 / rows.rows(0);
  int64_t full_vectors = p.n / 8;
  int64_t num_tiles = ceil_div(full_vectors, tile_vectors);
  int64_t max_tiles_per_item = std::max<int64_t>(1, kDirectStripFloats / (p.m * tile_vectors * 8));
  run_blocks(num_tiles, max_tiles_per_item, 2.0 * p.m * p.n * p.k, [&](int64_t begin, int64_t end) {
    for (int64_t k0 = 0; k0 < p.k; k0 += kDirectDepth) {
      int64_t kc = std::min(kDirectDepth, p.k - k0);
      for (int64_t t = begin; t < end; ++t) {
        int64_t vectors = std::min(tile_vectors, full_vectors - t * tile_vectors);
        int64_t n0 = t * tile_vectors * 8;
        for (int64_t r = 0; r < rows.count; ++r) {
          int64_t m0 = rows.start(r);
          direct_tiles<W>[rows.rows(r) - 1][vectors - 1](p.x + m0 * p.k + k0, p.k, w + k0 * p.n + n0, p.n, kc,
                                                          p.y + m0 * p.n + n0, p.n, static_cast<int>(8 * vectors),
                                                          k0 > 0);
        }
      }
    }
  });
  int64_t tail = p.n % 8;
  if (tail) {
    // The last N % 8 columns, through a zero-padded [K, 8] copy (a tile reads 8 at a time).
    int64_t n0 = full_vectors * 8;
    float* panel = scratch(8 * p.k);
    for (int64_t k = 0; k < p.k; ++k)
      for (int c = 0; c < 8; ++c) panel[8 * k + c] = c < tail ? widen(w[k * p.n + n0 + c]) : 0.0f;
    for (int64_t r = 0; r < rows.count; ++r) {
      int64_t m0 = rows.start(r);
      direct_tiles<float>[rows.rows(r) - 1][0](p.x + m0 * p.k, p.k, panel, 8, p.k, p.y + m0 * p.n + n0, p.n,
                                               static_cast<int>(tail), false);
    }
  }
}

// Row stride (floats) of a packed slice of `ncols` columns: whole panels, then padded to
// an odd number of 64-byte lines so a panel's rows spread over every L1 set (a stride
// that is a multiple of 4 KiB, as W's own often is, piles them into one 8-way set).
int64_t packed_stride(int64_t ncols) {
  int64_t lines = ceil_div(ceil_div(ncols, kPanelWidth) * kPanelWidth, 16);
  return 16 * (lines | 1);
}

// Asks for rows [begin, end) of a slice of W (row stride ldw, ncols columns) to be
// brought into the caches, so that packing them later does not wait on memory.
template <typename W>
void prefetch_rows(const W* w, int64_t ldw, int64_t begin, int64_t end, int64_t ncols) {
#if SURGE_ATTENTION_AVX2
  const int64_t row_bytes = ncols * static_cast<int64_t>(sizeof(W));
  for (int64_t k = begin; k < end; ++k) {
    const char* row = reinterpret_cast<const char*>(w + k * ldw);
    for (int64_t b = 0; b < row_bytes; b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
  }
#else
  (void)w, (void)ldw, (void)begin, (void)end, (void)ncols;
#endif
}

// kc rows x ncols columns of W (row stride ldw) -> float32 rows of `stride`, zero past ncols.
template <typename W>
void pack_slice(const W* w, int64_t ldw, int64_t kc, int64_t ncols, int64_t stride, float* packed) {
  for (int64_t k = 0; k < kc; ++k) {
    const W* src = w + k * ldw;
    float* dst = packed + k * stride;
    // Rows of W lie far apart (often a page or more), so the hardware prefetchers start
    // over at every row: ask for the next row while copying this one.
    if (k + 1 < kc) prefetch_rows(src, ldw, 1, 2, ncols);
    int64_t c = 0;
#if SURGE_ATTENTION_AVX2
    for (; c + 8 <= ncols; c += 8) _mm256_storeu_ps(dst + c, load8(src + c));
#endif
    for (; c < ncols; ++c) dst[c] = widen(src[c]);
    for (; c < stride; ++c) dst[c] = 0.0f;
  }
}

template <typename W>
void packed(const MatmulProblem& p) {
  const W* w = static_cast<const W*>(p.w);
  RowTiles tiles(p.m, 4);
  int64_t max_panels = std::max<int64_t>(
      1, std::min(kStripBytes / (4 * p.m * kPanelWidth), kPackedBytes / (4 * kDepth * kPanelWidth)));
  run_blocks(ceil_div(p.n, kPanelWidth), max_panels, 2.0 * p.m * p.n * p.k, [&](int64_t begin, int64_t end) {
    int64_t n0 = begin * kPanelWidth;
    int64_t ncols = std::min(p.n, end * kPanelWidth) - n0;
    int64_t panels = end - begin;
    int64_t stride = packed_stride(ncols);
    float* slice = scratch(kDepth * stride);
    for (int64_t k0 = 0; k0 < p.k; k0 += kDepth) {
      int64_t kc = std::min(kDepth, p.k - k0);
      pack_slice(w + k0 * p.n + n0, p.n, kc, ncols, stride, slice);
      // While this slice is multiplied, the next one comes in from memory: a share of its
      // rows is requested before each panel.
      int64_t next_rows = std::max<int64_t>(0, std::min(kDepth, p.k - k0 - kDepth));
      const W* next = next_rows > 0 ? w + (k0 + kDepth) * p.n + n0 : w;
      for (int64_t j = 0; j < panels; ++j) {
        prefetch_rows(next, p.n, next_rows * j / panels, next_rows * (j + 1) / panels, ncols);
        int width = static_cast<int>(std::min(kPanelWidth, ncols - j * kPanelWidth));
        for (int64_t t = 0; t < tiles.count; ++t) {
          int64_t m0 = tiles.start(t);
          packed_tiles[tiles.rows(t) - 1](p.x + m0 * p.k + k0, p.k, slice + j * kPanelWidth, stride, kc,
                                          p.y + m0 * p.n + n0 + j * kPanelWidth, p.n, width, k0 > 0);
        }
      }
    }
  });
}

template <typename W>
void run(const MatmulProblem& p) {
  // Past a few rows the direct way re-reads each slice of W once per row tile, from L1
  // unless W's row stride piles the slice's rows into a few cache sets.
  bool rows_alias = (p.n * static_cast<int64_t>(sizeof(W))) % kAliasingStrideBytes == 0;
  if (p.m <= kMaxDirectRows || (p.m <= kMaxDirectRowsUnaliased && !rows_alias)) {
    direct<W>(p);
  } else {
    packed<W>(p);
  }
}

}  // namespace

void matmul_kn(const MatmulProblem& p) {
  if (p.w_type == WeightType::kBFloat16) {
    run<uint16_t>(p);
  } else {
    run<float>(p);
  }
}

}  // namespace surge::matmul
