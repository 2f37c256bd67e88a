// int8 block dots of the quantized matmul on x86 (contract: cpu/scalar/qdot.h), shared by the
// avx2, avx512 and avx512_bf16 variants: 32 products per block in one ymm, u8 x s8 pairs by
// vpmaddubsw + vpmaddwd, or one vpdpbusd where the variant has VNNI (avx512_bf16). A signed
// Q8_0 weight goes in as |w| with its sign moved onto x. Scales are f16 read by F16C.
#pragma once

namespace surge::cpu::SURGE_ISA_NS {

// The 8 int32 sums of 4 products u[i] * s[i] (u unsigned, s signed bytes).
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(SURGE_ISA_AVX512_BF16)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

inline float half(const uint8_t* p) { return _cvtsh_ss(load_u16(p)); }

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Weights 0-15 from the low nibbles, 16-31 from the high ones, as bytes 0..15.
inline __m256i unpack_nibbles(const uint8_t* qs) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  __m256i both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
  return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

inline float sum8(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R>
void dot_q8_0(const uint8_t* w, int64_t nb, const int8_t* const* xq, const float* const* xd, float* out) {
  __m256 acc[R];
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = w + b * 34;
    const float d = half(block);
    const __m256i q = load32(block + 2);
    const __m256i magnitude = _mm256_sign_epi8(q, q);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256i x = _mm256_sign_epi8(load32(xq[r] + b * 32), q);
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_u8s8(magnitude, x)), _mm256_set1_ps(d * xd[r][b]), acc[r]);
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) out[r] = sum8(acc[r]);
}

template <int R>
void dot_q4_0(const uint8_t* w, int64_t nb, const int8_t* const* xq, const float* const* xd,
              const float* const* xs, float* out) {
  __m256 acc[R];
  float offset[R] = {};
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = w + b * 18;
    const float d = half(block);
    const __m256i q = unpack_nibbles(block + 2);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256i p = dot_u8s8(q, load32(xq[r] + b * 32));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * xd[r][b]), acc[r]);
      offset[r] += d * xs[r][b];
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) out[r] = sum8(acc[r]) - 8.0f * offset[r];
}

template <int R>
void dot_q4_1(const uint8_t* w, int64_t nb, const int8_t* const* xq, const float* const* xd,
              const float* const* xs, float* out) {
  __m256 acc[R];
  float offset[R] = {};
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = w + b * 20;
    const float d = half(block);
    const float m = half(block + 2);
    const __m256i q = unpack_nibbles(block + 4);
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256i p = dot_u8s8(q, load32(xq[r] + b * 32));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * xd[r][b]), acc[r]);
      offset[r] += m * xs[r][b];
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) out[r] = sum8(acc[r]) + offset[r];
}

// One unpacked K-quant super-block (contract: cpu/scalar/qdot.h). Weights are signed (|q| <= 32), so
// they go in as |q| with their sign moved onto x; int32 lanes 0-3 hold weights 0-15, lanes 4-7 16-31,
// each half under its own scale.
template <int R>
void dot_unpacked(const int8_t* q, const float* scale, const float* offset, const int8_t* const* xq,
                  const float* const* xd, const float* const* xs, float* acc) {
  __m256 sum[R];
  float off[R] = {};
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) sum[r] = _mm256_setzero_ps();
  #pragma GCC unroll 8
  for (int b = 0; b < 8; ++b) {
    const __m256i w = load32(q + 32 * b);
    const __m256i magnitude = _mm256_sign_epi8(w, w);
    const __m256 halves = _mm256_set_m128(_mm_set1_ps(scale[2 * b + 1]), _mm_set1_ps(scale[2 * b]));
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256i x = _mm256_sign_epi8(load32(xq[r] + 32 * b), w);
      const __m256 p = _mm256_cvtepi32_ps(dot_u8s8(magnitude, x));
      sum[r] = _mm256_fmadd_ps(p, _mm256_mul_ps(halves, _mm256_set1_ps(xd[r][b])), sum[r]);
      off[r] += offset[b] * xs[r][b];
    }
  }
  #pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] += sum8(sum[r]) + off[r];
}

}  // namespace surge::cpu::SURGE_ISA_NS
