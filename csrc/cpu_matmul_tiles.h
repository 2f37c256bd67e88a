// Register-blocked micro-kernels of the CPU matmul (see cpu_matmul.h).
//
// kn_tile — In: MR rows of x (row stride ldx) and kc rows of a W panel NV vectors of 8
// wide (row stride ldw; float32, or bfloat16 stored as uint16 and widened in registers).
// Out: the MR x ncols tile of y (row stride ldy, ncols <= 8 NV), overwritten or added
// to. Accumulators: MR x NV vectors, times KS sets that take alternate k so a small tile
// still has enough independent FMAs in flight (a result is ready ~4 cycles after issue,
// and two issue per cycle).
// nk_tile — In: MR rows of x and NC rows of an [N, K] weight. Out: the MR x NC dot
// products (x_r . w_c over all K), overwritten into y. Accumulators run along k.
// Without AVX2 + FMA both have a scalar body with the same contract.
#pragma once

#include <cstdint>

#include "cpu_attention_simd.h"

namespace surge::matmul {

inline float widen(float v) { return v; }
inline float widen(uint16_t v) { return attention::bf16_to_f32(v); }

#if SURGE_ATTENTION_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
// bfloat16 is the top half of a float32: zero-extend each 16-bit lane, shift it up.
inline __m256 load8(const uint16_t* p) {
  __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16));
}

template <int MR, int NV, int KS, typename W>
inline void kn_tile(const float* x, int64_t ldx, const W* w, int64_t ldw, int64_t kc, float* y, int64_t ldy,
                    int ncols, bool accumulate) {
  __m256 acc[KS][MR][NV];
#pragma GCC unroll 16
  for (int s = 0; s < KS; ++s)
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[s][r][v] = _mm256_setzero_ps();

  // acc[s] += x[:, k] * W[k, :] for the rows k of one step.
  auto step = [&](int s, int64_t k) __attribute__((always_inline)) {
    const W* row = w + k * ldw;
    __m256 wv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) wv[v] = load8(row + 8 * v);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      __m256 xb = _mm256_broadcast_ss(x + r * ldx + k);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[s][r][v] = _mm256_fmadd_ps(xb, wv[v], acc[s][r][v]);
    }
  };
  int64_t k = 0;
  for (; k + KS <= kc; k += KS) {
#pragma GCC unroll 16
    for (int s = 0; s < KS; ++s) step(s, k + s);
  }
  for (; k < kc; ++k) step(0, k);
#pragma GCC unroll 16
  for (int s = 1; s < KS; ++s)
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[0][r][v] = _mm256_add_ps(acc[0][r][v], acc[s][r][v]);

  if (ncols == 8 * NV) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        float* out = y + r * ldy + 8 * v;
        __m256 sum = accumulate ? _mm256_add_ps(acc[0][r][v], _mm256_loadu_ps(out)) : acc[0][r][v];
        _mm256_storeu_ps(out, sum);
      }
    return;
  }
  // A partial tile (the last columns of y): spill it, write the valid columns.
  // (Loops over acc stay fully unrolled, or GCC keeps acc in memory for the whole tile.)
  alignas(32) float tile[MR][8 * NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm256_store_ps(&tile[r][8 * v], acc[0][r][v]);
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < ncols; ++c) y[r * ldy + c] = (accumulate ? y[r * ldy + c] : 0.0f) + tile[r][c];
}

// The NC lane-sums of acc[0..NC) written to out[0..NC).
template <int NC>
inline void store_lane_sums(const __m256* acc, float* out) {
  int c = 0;
#pragma GCC unroll 4
  for (; c + 4 <= NC; c += 4) _mm_storeu_ps(out + c, attention::horizontal_sum4(acc[c], acc[c + 1], acc[c + 2], acc[c + 3]));
#pragma GCC unroll 4
  for (; c < NC; ++c) out[c] = attention::horizontal_sum(acc[c]);
}

template <int MR, int NC, typename W>
inline void nk_tile(const float* x, int64_t ldx, const W* w, int64_t ldw, int64_t kc, float* y, int64_t ldy) {
  __m256 acc[MR][NC];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    __m256 xv[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) xv[r] = _mm256_loadu_ps(x + r * ldx + k);
#pragma GCC unroll 16
    for (int c = 0; c < NC; ++c) {
      __m256 wv = load8(w + c * ldw + k);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* out = y + r * ldy;
    store_lane_sums<NC>(acc[r], out);
    for (int64_t kk = k; kk < kc; ++kk)
      for (int c = 0; c < NC; ++c) out[c] += x[r * ldx + kk] * widen(w[c * ldw + kk]);
  }
}

#else  // portable scalar bodies

template <int MR, int NV, int KS, typename W>
inline void kn_tile(const float* x, int64_t ldx, const W* w, int64_t ldw, int64_t kc, float* y, int64_t ldy,
                    int ncols, bool accumulate) {
  float acc[MR][8 * NV] = {};
  for (int64_t k = 0; k < kc; ++k)
    for (int r = 0; r < MR; ++r) {
      float xv = x[r * ldx + k];
      for (int c = 0; c < 8 * NV; ++c) acc[r][c] += xv * widen(w[k * ldw + c]);
    }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < ncols; ++c) y[r * ldy + c] = (accumulate ? y[r * ldy + c] : 0.0f) + acc[r][c];
}

template <int MR, int NC, typename W>
inline void nk_tile(const float* x, int64_t ldx, const W* w, int64_t ldw, int64_t kc, float* y, int64_t ldy) {
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NC; ++c) {
      float sum = 0.0f;
      for (int64_t k = 0; k < kc; ++k) sum += x[r * ldx + k] * widen(w[c * ldw + k]);
      y[r * ldy + c] = sum;
    }
}

#endif

}  // namespace surge::matmul
