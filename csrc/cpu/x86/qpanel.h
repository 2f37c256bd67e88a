// The quantized matmul's batch path on x86 (avx2, avx512, avx512_bf16): Q8_0 / Q4_0 / Q4_1 weights
// against several rows of x at once, over panels of 8 weight rows whose blocks are interleaved so
// that one ymm's 8 int32 lanes are 8 output columns.
//
// In: the problem, x already quantized to Q8 blocks (quant_matmul.inc). Out: y [M, N].
// Each work item takes panels of 8 weight rows; a panel is first repacked into a per-thread
// buffer (kBlockBytes per block of 32: 8 steps of 32 bytes whose lane j holds column j's weights
// 4s..4s+3 as bytes, Q4 nibbles already unpacked, then 8 float scales d and 8 offsets m), then
// every tile of up to kTileRows rows of x runs over it: per step one broadcast of x's 4 bytes
// against the 8 columns (vpmaddubsw, or vpdpbusd with VNNI), so the repacking and unpacking are
// paid once per panel and not once per row. Q4 weights (0..15) times int8 x sum in int16 over a
// block's 8 steps without overflow (8 * 2 * 15 * 127 < 32767); signed Q8_0 weights go in as |w|
// with their sign moved onto x and sum in int32. Per block: y += d_w d_x dot + m s_x, where
// m = Q4_1's min, -8 d_w for Q4_0 (its offset), 0 for Q8_0.
#pragma once

#define SURGE_HAS_QUANT_PANEL 1

namespace surge::cpu::SURGE_ISA_NS {
namespace qpanel {

constexpr int kCols = 8;
constexpr int kTileRows = 4;
constexpr int64_t kMinRows = 4;  // below this the row path (quant_matmul.inc) is faster: no repacking
constexpr int64_t kBlockBytes = 8 * 32 + 2 * 32;
constexpr int64_t kMaxPanelsPerItem = 16;

inline bool handles(QuantType t) {
  return t == QuantType::kQ8_0 || t == QuantType::kQ4_0 || t == QuantType::kQ4_1;
}

// v[j] (32 bytes of column j) -> v[s] whose int32 lane j is column j's lane s.
inline void transpose8x8(__m256i* v) {
  __m256i t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x20);
    v[i + 4] = _mm256_permute2x128_si256(u[i], u[i + 4], 0x31);
  }
}

// Repacks `cols` (<= 8) weight rows starting at w into out (nb * kBlockBytes); missing columns are zero.
inline void pack(QuantType type, const uint8_t* w, int64_t row_bytes, int cols, int64_t nb, uint8_t* out) {
  const int64_t block_bytes = quant_block_bytes(type);
  for (int64_t b = 0; b < nb; ++b) {
    __m256i v[kCols];
    alignas(32) float d[kCols], m[kCols];
    for (int j = 0; j < kCols; ++j) {
      if (j >= cols) {
        v[j] = _mm256_setzero_si256();
        d[j] = m[j] = 0.0f;
        continue;
      }
      const uint8_t* block = w + j * row_bytes + b * block_bytes;
      d[j] = half(block);
      if (type == QuantType::kQ8_0) {
        v[j] = load32(block + 2);
        m[j] = 0.0f;
      } else if (type == QuantType::kQ4_0) {
        v[j] = unpack_nibbles(block + 2);
        m[j] = -8.0f * d[j];
      } else {
        v[j] = unpack_nibbles(block + 4);
        m[j] = half(block + 2);
      }
    }
    transpose8x8(v);
    uint8_t* o = out + b * kBlockBytes;
    for (int s = 0; s < 8; ++s) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 32 * s), v[s]);
    _mm256_storeu_ps(reinterpret_cast<float*>(o + 256), _mm256_load_ps(d));
    _mm256_storeu_ps(reinterpret_cast<float*>(o + 288), _mm256_load_ps(m));
  }
}

inline __m256i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// out[r][0..8) = x row r against the panel's 8 columns, for R rows of x.
template <int R, bool kSignedWeights>
void tile(const uint8_t* panel, int64_t nb, const int8_t* const* xq, const float* const* xd,
          const float* const* xs, float* const* out) {
  __m256 acc[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* pb = panel + b * kBlockBytes;
    __m256i dot[R];
    if constexpr (kSignedWeights) {
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) dot[r] = _mm256_setzero_si256();
      #pragma GCC unroll 8
      for (int s = 0; s < 8; ++s) {
        const __m256i w = load32(pb + 32 * s);
        const __m256i magnitude = _mm256_sign_epi8(w, w);
        #pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m256i x = _mm256_sign_epi8(broadcast4(xq[r] + 32 * b + 4 * s), w);
#if defined(SURGE_ISA_AVX512_BF16)
          dot[r] = _mm256_dpbusd_epi32(dot[r], magnitude, x);
#else
          dot[r] = _mm256_add_epi32(dot[r], dot_u8s8(magnitude, x));
#endif
        }
      }
    } else {
#if defined(SURGE_ISA_AVX512_BF16)
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) dot[r] = _mm256_setzero_si256();
      #pragma GCC unroll 8
      for (int s = 0; s < 8; ++s) {
        const __m256i w = load32(pb + 32 * s);
        #pragma GCC unroll 8
        for (int r = 0; r < R; ++r) dot[r] = _mm256_dpbusd_epi32(dot[r], w, broadcast4(xq[r] + 32 * b + 4 * s));
      }
#else
      // Row by row: the int16 sums then live in one register (an array of them across rows gets spilled).
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        __m256i pairs = _mm256_maddubs_epi16(load32(pb), broadcast4(xq[r] + 32 * b));
#pragma GCC unroll 8
        for (int s = 1; s < 8; ++s)
          pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(load32(pb + 32 * s), broadcast4(xq[r] + 32 * b + 4 * s)));
        dot[r] = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
      }
#endif
    }
    const __m256 d = _mm256_loadu_ps(reinterpret_cast<const float*>(pb + 256));
    const __m256 m = _mm256_loadu_ps(reinterpret_cast<const float*>(pb + 288));
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[r]), _mm256_mul_ps(d, _mm256_set1_ps(xd[r][b])), acc[r]);
      if constexpr (!kSignedWeights) acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(xs[r][b]), acc[r]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out[r], acc[r]);
}

template <bool kSignedWeights>
void tile_rows(int rows, const uint8_t* panel, int64_t nb, const int8_t* const* xq, const float* const* xd,
               const float* const* xs, float* const* out) {
  switch (rows) {
    case 1: tile<1, kSignedWeights>(panel, nb, xq, xd, xs, out); break;
    case 2: tile<2, kSignedWeights>(panel, nb, xq, xd, xs, out); break;
    case 3: tile<3, kSignedWeights>(panel, nb, xq, xd, xs, out); break;
    default: tile<4, kSignedWeights>(panel, nb, xq, xd, xs, out); break;
  }
}

// xq [M, K] int8, xd / xs [M, K / 32]: x's Q8 blocks, their scales and scaled sums.
inline void run(const QuantMatmulProblem& p, const int8_t* xq, const float* xd, const float* xs) {
  const int64_t nb = p.k / kQuantBlock;
  const int64_t row_bytes = nb * quant_block_bytes(p.type);
  const bool signed_weights = p.type == QuantType::kQ8_0;
  const matmul::RowTiles tiles(p.m, kTileRows);
  matmul::run_blocks(matmul::ceil_div(p.n, kCols), kMaxPanelsPerItem, 2.0 * p.m * p.n * p.k,
                     [&](int64_t begin, int64_t end) {
    uint8_t* panel = reinterpret_cast<uint8_t*>(matmul::panel_scratch(nb * kBlockBytes / 4));
    for (int64_t c = begin; c < end; ++c) {
      const int64_t n0 = c * kCols;
      const int cols = static_cast<int>(std::min<int64_t>(kCols, p.n - n0));
      pack(p.type, p.w + n0 * row_bytes, row_bytes, cols, nb, panel);
      for (int64_t t = 0; t < tiles.count; ++t) {
        const int64_t m0 = tiles.start(t);
        const int rows = static_cast<int>(tiles.rows(t));
        const int8_t* q[kTileRows];
        const float* d[kTileRows];
        const float* s[kTileRows];
        float* out[kTileRows];
        float partial[kTileRows][kCols];  // a last panel's narrower columns
        for (int r = 0; r < rows; ++r) {
          q[r] = xq + (m0 + r) * p.k;
          d[r] = xd + (m0 + r) * nb;
          s[r] = xs + (m0 + r) * nb;
          out[r] = cols == kCols ? p.y + (m0 + r) * p.n + n0 : partial[r];
        }
        if (signed_weights) tile_rows<true>(rows, panel, nb, q, d, s, out);
        else tile_rows<false>(rows, panel, nb, q, d, s, out);
        if (cols < kCols)
          for (int r = 0; r < rows; ++r) std::copy(partial[r], partial[r] + cols, p.y + (m0 + r) * p.n + n0);
      }
    }
  });
}

}  // namespace qpanel
}  // namespace surge::cpu::SURGE_ISA_NS
