// Vector primitives of the CPU paged-attention kernel.
//
// In: float32 rows of length head_dim (any length; AVX2 + FMA handle 8 lanes at a
// time and a scalar tail handles the rest), bfloat16 rows stored as uint16.
// Out: score tiles (q . k), output accumulators (+= p * v), softmax weights
// (exp), soft-capped scores (tanh), bfloat16 <-> float32 conversions.
// Without AVX2 + FMA (other processors) every primitive has a scalar path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SURGE_ATTENTION_AVX2 1
#else
#define SURGE_ATTENTION_AVX2 0
#endif

namespace surge::attention {

inline float bf16_to_f32(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

// Round to nearest even; NaN stays NaN (quiet bit forced so truncation cannot make it Inf).
inline uint16_t f32_to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline void bf16_row_to_f32(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
#if SURGE_ATTENTION_AVX2
  for (; i + 8 <= n; i += 8) {
    __m128i halves = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    __m256i wide = _mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16);
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(wide));
  }
#endif
  for (; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

#if SURGE_ATTENTION_AVX2
// e^x for 8 lanes: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6 Taylor polynomial
// (relative error ~1e-7), 2^n put straight into the exponent bits. Lanes below -87
// (including -inf) give exactly 0, so masked scores carry no weight.
inline __m256 exp8(__m256 x) {
  const __m256 lower = _mm256_set1_ps(-87.0f);
  const __m256 upper = _mm256_set1_ps(88.0f);
  __m256 underflow = _mm256_cmp_ps(x, lower, _CMP_LT_OQ);
  // Operand order keeps NaN lanes NaN (maxps/minps return the second operand on NaN).
  __m256 xc = _mm256_min_ps(upper, _mm256_max_ps(lower, x));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln2 split in a high part exact in float and a low correction (Cody-Waite reduction).
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23));
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(p, scale));
}

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The four lane-sums of a, b, c, d as one 4-vector.
inline __m128 horizontal_sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  __m256 ab = _mm256_hadd_ps(a, b);
  __m256 cd = _mm256_hadd_ps(c, d);
  __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}
#endif

// x[i] = exp(x[i] - shift) for i in [0, n); returns the sum of the results.
inline float exp_shifted_sum(float* x, int64_t n, float shift) {
  int64_t i = 0;
  float total = 0.0f;
#if SURGE_ATTENTION_AVX2
  __m256 shift8 = _mm256_set1_ps(shift);
  __m256 sum8 = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), shift8));
    _mm256_storeu_ps(x + i, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  total = horizontal_sum(sum8);
#endif
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    total += x[i];
  }
  return total;
}

// x[i] = cap * tanh(x[i] / cap) for i in [0, n).
inline void soft_cap_row(float* x, int64_t n, float cap) {
  int64_t i = 0;
#if SURGE_ATTENTION_AVX2
  // tanh(y) = 1 - 2 / (e^{2y} + 1); |y| is clamped at 9 where tanh is 1 to float precision.
  const __m256 cap8 = _mm256_set1_ps(cap);
  const __m256 two_over_cap = _mm256_set1_ps(2.0f / cap);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 two = _mm256_set1_ps(2.0f);
  for (; i + 8 <= n; i += 8) {
    __m256 y2 = _mm256_mul_ps(_mm256_loadu_ps(x + i), two_over_cap);
    y2 = _mm256_min_ps(_mm256_set1_ps(18.0f), _mm256_max_ps(_mm256_set1_ps(-18.0f), y2));
    __m256 t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(exp8(y2), one)));
    _mm256_storeu_ps(x + i, _mm256_mul_ps(cap8, t));
  }
#endif
  for (; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

// Largest of x[0, n), n >= 1.
inline float max_of(const float* x, int64_t n) {
  int64_t i = 0;
  float best = x[0];
#if SURGE_ATTENTION_AVX2
  if (n >= 8) {
    __m256 best8 = _mm256_loadu_ps(x);
    for (i = 8; i + 8 <= n; i += 8) best8 = _mm256_max_ps(best8, _mm256_loadu_ps(x + i));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(best8), _mm256_extractf128_ps(best8, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    best = _mm_cvtss_f32(m);
  }
#endif
  for (; i < n; ++i) best = std::max(best, x[i]);
  return best;
}

inline float exp_scalar(float x) {
#if SURGE_ATTENTION_AVX2
  return _mm256_cvtss_f32(exp8(_mm256_set1_ps(x)));
#else
  return std::exp(x);
#endif
}

inline void scale_row(float* x, int64_t n, float factor) {
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

// s[r * s_stride + c] = q_r . k_c for NR query rows (stride hd) and NK key rows (stride hd).
template <int NR, int NK>
inline void dot_tile(const float* q, const float* k, int64_t hd, float* s, int64_t s_stride) {
  int64_t d = 0;
  float sums[NR][NK] = {};
#if SURGE_ATTENTION_AVX2
  __m256 acc[NR][NK];
  for (int r = 0; r < NR; ++r)
    for (int c = 0; c < NK; ++c) acc[r][c] = _mm256_setzero_ps();
  for (; d + 8 <= hd; d += 8) {
    __m256 qv[NR];
    for (int r = 0; r < NR; ++r) qv[r] = _mm256_loadu_ps(q + r * hd + d);
    for (int c = 0; c < NK; ++c) {
      __m256 kv = _mm256_loadu_ps(k + c * hd + d);
      for (int r = 0; r < NR; ++r) acc[r][c] = _mm256_fmadd_ps(qv[r], kv, acc[r][c]);
    }
  }
  for (int r = 0; r < NR; ++r) {
    if constexpr (NK == 4) {
      float four[4];
      _mm_storeu_ps(four, horizontal_sum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
      for (int c = 0; c < 4; ++c) sums[r][c] = four[c];
    } else {
      for (int c = 0; c < NK; ++c) sums[r][c] = horizontal_sum(acc[r][c]);
    }
  }
#endif
  for (; d < hd; ++d)
    for (int r = 0; r < NR; ++r)
      for (int c = 0; c < NK; ++c) sums[r][c] += q[r * hd + d] * k[c * hd + d];
  for (int r = 0; r < NR; ++r)
    for (int c = 0; c < NK; ++c) s[r * s_stride + c] = sums[r][c];
}

// acc_r += sum_c p[r * p_stride + c] * v_c for NR rows, nk value rows (stride hd).
template <int NR>
inline void weighted_sum_tile(const float* p, int64_t p_stride, const float* v, int64_t nk, int64_t hd,
                              float* acc, int64_t acc_stride) {
  int64_t d = 0;
#if SURGE_ATTENTION_AVX2
  for (; d + 16 <= hd; d += 16) {
    __m256 a0[NR], a1[NR];
    for (int r = 0; r < NR; ++r) {
      a0[r] = _mm256_loadu_ps(acc + r * acc_stride + d);
      a1[r] = _mm256_loadu_ps(acc + r * acc_stride + d + 8);
    }
    for (int64_t c = 0; c < nk; ++c) {
      __m256 v0 = _mm256_loadu_ps(v + c * hd + d);
      __m256 v1 = _mm256_loadu_ps(v + c * hd + d + 8);
      for (int r = 0; r < NR; ++r) {
        __m256 w = _mm256_broadcast_ss(p + r * p_stride + c);
        a0[r] = _mm256_fmadd_ps(w, v0, a0[r]);
        a1[r] = _mm256_fmadd_ps(w, v1, a1[r]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      _mm256_storeu_ps(acc + r * acc_stride + d, a0[r]);
      _mm256_storeu_ps(acc + r * acc_stride + d + 8, a1[r]);
    }
  }
  for (; d + 8 <= hd; d += 8) {
    __m256 a[NR];
    for (int r = 0; r < NR; ++r) a[r] = _mm256_loadu_ps(acc + r * acc_stride + d);
    for (int64_t c = 0; c < nk; ++c) {
      __m256 v0 = _mm256_loadu_ps(v + c * hd + d);
      for (int r = 0; r < NR; ++r) a[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + r * p_stride + c), v0, a[r]);
    }
    for (int r = 0; r < NR; ++r) _mm256_storeu_ps(acc + r * acc_stride + d, a[r]);
  }
#endif
  for (; d < hd; ++d)
    for (int r = 0; r < NR; ++r) {
      float sum = acc[r * acc_stride + d];
      for (int64_t c = 0; c < nk; ++c) sum += p[r * p_stride + c] * v[c * hd + d];
      acc[r * acc_stride + d] = sum;
    }
}

}  // namespace surge::attention
