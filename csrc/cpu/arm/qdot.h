// int8 block dots of the quantized matmul on AArch64 (contract: cpu/scalar/qdot.h), shared by
// the neon and neon_dotprod variants: 32 s8 x s8 products per block by vmull/vmlal + pairwise
// adds, or two sdot (vdotq_s32) where the variant has the dot-product extension.
#pragma once

namespace surge::cpu::SURGE_ISA_NS {

inline int32x4_t dot32(int8x16_t w0, int8x16_t w1, const int8_t* x) {
  const int8x16_t x0 = vld1q_s8(x);
  const int8x16_t x1 = vld1q_s8(x + 16);
#if defined(SURGE_ISA_NEON_DOTPROD)
  return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#else
  // |products| <= 128 * 127, two of them fit int16.
  int16x8_t a = vmull_s8(vget_low_s8(w0), vget_low_s8(x0));
  a = vmlal_s8(a, vget_high_s8(w0), vget_high_s8(x0));
  int16x8_t b = vmull_s8(vget_low_s8(w1), vget_low_s8(x1));
  b = vmlal_s8(b, vget_high_s8(w1), vget_high_s8(x1));
  return vaddq_s32(vpaddlq_s16(a), vpaddlq_s16(b));
#endif
}

template <int R>
void dot_q8_0(const uint8_t* w, int64_t nb, const int8_t* const* xq, const float* const* xd, float* out) {
  float32x4_t acc[R];
  for (int r = 0; r < R; ++r) acc[r] = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = w + b * 34;
    const float d = f16_to_f32(load_u16(block));
    const int8x16_t w0 = vld1q_s8(reinterpret_cast<const int8_t*>(block + 2));
    const int8x16_t w1 = vld1q_s8(reinterpret_cast<const int8_t*>(block + 18));
    for (int r = 0; r < R; ++r) {
      acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot32(w0, w1, xq[r] + b * 32)), d * xd[r][b]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = vaddvq_f32(acc[r]);
}

template <int R, bool kHasMin>
void dot_q4(const uint8_t* w, int64_t nb, const int8_t* const* xq, const float* const* xd,
            const float* const* xs, float* out) {
  const int64_t block_bytes = kHasMin ? 20 : 18;
  float32x4_t acc[R];
  float offset[R] = {};
  for (int r = 0; r < R; ++r) acc[r] = vdupq_n_f32(0.0f);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = w + b * block_bytes;
    const float d = f16_to_f32(load_u16(block));
    const float m = kHasMin ? f16_to_f32(load_u16(block + 2)) : -8.0f * d;
    const uint8x16_t raw = vld1q_u8(block + (kHasMin ? 4 : 2));
    const int8x16_t w0 = vreinterpretq_s8_u8(vandq_u8(raw, vdupq_n_u8(0x0f)));
    const int8x16_t w1 = vreinterpretq_s8_u8(vshrq_n_u8(raw, 4));
    for (int r = 0; r < R; ++r) {
      acc[r] = vfmaq_n_f32(acc[r], vcvtq_f32_s32(dot32(w0, w1, xq[r] + b * 32)), d * xd[r][b]);
      offset[r] += m * xs[r][b];
    }
  }
  for (int r = 0; r < R; ++r) out[r] = vaddvq_f32(acc[r]) + offset[r];
}

template <int R>
void dot_q4_0(const uint8_t* w, int64_t nb, const int8_t* const* xq, const float* const* xd,
              const float* const* xs, float* out) {
  dot_q4<R, false>(w, nb, xq, xd, xs, out);
}

template <int R>
void dot_q4_1(const uint8_t* w, int64_t nb, const int8_t* const* xq, const float* const* xd,
              const float* const* xs, float* out) {
  dot_q4<R, true>(w, nb, xq, xd, xs, out);
}

// 16 s8 x s8 products as 4 int32 lanes (|products| <= 128 * 127, two of them fit int16).
inline int32x4_t dot16(int8x16_t w, const int8_t* x) {
  const int8x16_t xv = vld1q_s8(x);
#if defined(SURGE_ISA_NEON_DOTPROD)
  return vdotq_s32(vdupq_n_s32(0), w, xv);
#else
  int16x8_t a = vmull_s8(vget_low_s8(w), vget_low_s8(xv));
  a = vmlal_s8(a, vget_high_s8(w), vget_high_s8(xv));
  return vpaddlq_s16(a);
#endif
}

// One unpacked K-quant super-block (contract: cpu/scalar/qdot.h): each half of a block of 32 under its scale.
template <int R>
void dot_unpacked(const int8_t* q, const float* scale, const float* offset, const int8_t* const* xq,
                  const float* const* xd, const float* const* xs, float* acc) {
  float32x4_t sum[R];
  float off[R] = {};
  for (int r = 0; r < R; ++r) sum[r] = vdupq_n_f32(0.0f);
  for (int b = 0; b < 8; ++b) {
    const int8x16_t w0 = vld1q_s8(q + 32 * b);
    const int8x16_t w1 = vld1q_s8(q + 32 * b + 16);
    for (int r = 0; r < R; ++r) {
      const int8_t* x = xq[r] + 32 * b;
      sum[r] = vfmaq_n_f32(sum[r], vcvtq_f32_s32(dot16(w0, x)), scale[2 * b] * xd[r][b]);
      sum[r] = vfmaq_n_f32(sum[r], vcvtq_f32_s32(dot16(w1, x + 16)), scale[2 * b + 1] * xd[r][b]);
      off[r] += offset[b] * xs[r][b];
    }
  }
  for (int r = 0; r < R; ++r) acc[r] += vaddvq_f32(sum[r]) + off[r];
}

}  // namespace surge::cpu::SURGE_ISA_NS
