// int8 block dots of the quantized matmul, portable body (see cpu/kernels/quant_matmul.inc).
//
// dot_<type><R>: one weight row of nb GGUF blocks against R quantized rows of x
// (xq int8 [nb * 32], xd scales [nb], xs = xd * block sums [nb]); out[r] = that row's dot.
// dot_unpacked<R>: one unpacked K-quant super-block against R rows (below).
// Every variant's qdot.h offers these four with the same contract.
#pragma once

namespace surge::cpu::SURGE_ISA_NS {

inline int32_t dot32(const int8_t* a, const int8_t* b) {
  int32_t sum = 0;
  for (int i = 0; i < 32; ++i) sum += static_cast<int32_t>(a[i]) * b[i];
  return sum;
}

// The 32 weights 0..15 of a Q4 block: low nibbles are weights 0-15, high nibbles 16-31.
inline void unpack_nibbles(const uint8_t* qs, int8_t* out) {
  for (int i = 0; i < 16; ++i) {
    out[i] = static_cast<int8_t>(qs[i] & 0x0f);
    out[i + 16] = static_cast<int8_t>(qs[i] >> 4);
  }
}

template <int R>
void dot_q8_0(const uint8_t* w, int64_t nb, const int8_t* const* xq, const float* const* xd, float* out) {
  float acc[R] = {};
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = w + b * 34;
    const float d = f16_to_f32(load_u16(block));
    const int8_t* q = reinterpret_cast<const int8_t*>(block + 2);
    for (int r = 0; r < R; ++r) acc[r] += d * xd[r][b] * static_cast<float>(dot32(q, xq[r] + b * 32));
  }
  for (int r = 0; r < R; ++r) out[r] = acc[r];
}

template <int R>
void dot_q4_0(const uint8_t* w, int64_t nb, const int8_t* const* xq, const float* const* xd,
              const float* const* xs, float* out) {
  float acc[R] = {};
  int8_t q[32];
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = w + b * 18;
    const float d = f16_to_f32(load_u16(block));
    unpack_nibbles(block + 2, q);
    for (int r = 0; r < R; ++r) {
      acc[r] += d * (xd[r][b] * static_cast<float>(dot32(q, xq[r] + b * 32)) - 8.0f * xs[r][b]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = acc[r];
}

template <int R>
void dot_q4_1(const uint8_t* w, int64_t nb, const int8_t* const* xq, const float* const* xd,
              const float* const* xs, float* out) {
  float acc[R] = {};
  int8_t q[32];
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* block = w + b * 20;
    const float d = f16_to_f32(load_u16(block));
    const float m = f16_to_f32(load_u16(block + 2));
    unpack_nibbles(block + 4, q);
    for (int r = 0; r < R; ++r) {
      acc[r] += d * xd[r][b] * static_cast<float>(dot32(q, xq[r] + b * 32)) + m * xs[r][b];
    }
  }
  for (int r = 0; r < R; ++r) out[r] = acc[r];
}

// One unpacked K-quant super-block (kquant_unpack.inc: q [256] int8, scale [16] per 16 weights,
// offset [8] per 32) against R quantized rows of x (8 blocks each); adds each row's dot to acc[r].
template <int R>
void dot_unpacked(const int8_t* q, const float* scale, const float* offset, const int8_t* const* xq,
                  const float* const* xd, const float* const* xs, float* acc) {
  for (int b = 0; b < 8; ++b) {
    for (int r = 0; r < R; ++r) {
      int32_t low = 0, high = 0;
      for (int i = 0; i < 16; ++i) low += static_cast<int32_t>(q[32 * b + i]) * xq[r][32 * b + i];
      for (int i = 16; i < 32; ++i) high += static_cast<int32_t>(q[32 * b + i]) * xq[r][32 * b + i];
      acc[r] += xd[r][b] * (scale[2 * b] * static_cast<float>(low) + scale[2 * b + 1] * static_cast<float>(high)) +
                offset[b] * xs[r][b];
    }
  }
}

}  // namespace surge::cpu::SURGE_ISA_NS
