// The kernels one instruction-set variant provides, as a table of entry points.
//
// In: the problems of csrc/matmul/panels.h (float matmul), csrc/attention/kernel.h (paged
// attention), SiLU-and-multiply rows, and QuantMatmulProblem (GGUF-quantized weights).
// Out: every variant compiled into this build has a table (kernels_<isa>() below);
// cpu/isa.h picks one at run time. Each variant lives in its own namespace
// surge::cpu::<isa>, compiled from the same ISA-neutral sources (cpu/kernels/*.inc) over
// that variant's vector API (cpu/<arch>/<isa>/vec.h) and int8 block dots (qdot.h).
#pragma once

#include <cstdint>

#include "attention/kernel.h"
#include "matmul/panels.h"

namespace surge::cpu {

// GGUF block types surge multiplies in their quantized form (values = ggml's type ids).
enum class QuantType : int { kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8, kQ4_K = 12, kQ5_K = 13, kQ6_K = 14 };
constexpr int64_t kQuantBlock = 32;   // weights per block of Q8_0 / Q4_0 / Q4_1; x's activation blocks
constexpr int64_t kSuperBlock = 256;  // weights per super-block of Q4_K / Q5_K / Q6_K

// Bytes of one block of 32 weights: Q8_0 {f16 d; int8 q[32]}, Q4_0 {f16 d; uint8 q[16]},
// Q4_1 {f16 d; f16 m; uint8 q[16]} (low nibbles are weights 0-15, high nibbles 16-31;
// Q8_0: w = d q, Q4_0: w = d (q - 8), Q4_1: w = d q + m).
// Bytes of one super-block of 256 weights in eight sub-blocks j of 32:
// Q4_K (144) {f16 d; f16 dmin; uint8 scales[12]; uint8 qs[128]}: 6-bit scale sc_j and min m_j packed in
//   scales (j < 4: sc = s[j] & 63, m = s[j + 4] & 63; j >= 4: sc = s[j + 4] & 15 | (s[j - 4] >> 6) << 4,
//   m = s[j + 4] >> 4 | (s[j] >> 6) << 4); weight i of sub-block j is nibble j % 2 of qs[32 (j / 2) + i];
//   w = d sc_j q - dmin m_j.
// Q5_K (176) {f16 d; f16 dmin; uint8 scales[12]; uint8 qh[32]; uint8 qs[128]}: as Q4_K with a fifth bit,
//   bit j of qh[i], on top of the nibble.
// Q6_K (210) {uint8 ql[128]; uint8 qh[64]; int8 scales[16]; f16 d}: sub-block c = 4 h + u (h the half of
//   128 weights) takes weight i's low nibble from ql[64 h + 32 (u % 2) + i] (nibble u / 2) and its two high
//   bits from qh[32 h + i] >> 2 u; w = d scales[i / 16] (q - 32) over the super-block's weight index i.
inline int64_t quant_block_bytes(QuantType t) {
  switch (t) {
    case QuantType::kQ8_0: return 34;
    case QuantType::kQ4_0: return 18;
    case QuantType::kQ4_1: return 20;
    case QuantType::kQ4_K: return 144;
    case QuantType::kQ5_K: return 176;
    case QuantType::kQ6_K: return 210;
  }
  return 0;
}

// Weights per block: 32, or 256 for the K-quants.
inline int64_t quant_block_weights(QuantType t) {
  return t == QuantType::kQ4_K || t == QuantType::kQ5_K || t == QuantType::kQ6_K ? kSuperBlock : kQuantBlock;
}

// y [M, N] float32 = x [M, K] @ W^T, W [N, K] stored as N rows of K / 32 GGUF blocks (K / 256
// super-blocks for the K-quants). x is first quantized per block of 32 to int8 (d = max|x| / 127,
// q = round(x / d)), then each output is sum over blocks of d_w d_x (int32 dot of q_w, q_x), with
// a K-quant's sub-block scales (per 32, Q6_K per 16) inside d_w, plus the min terms (Q4_1, Q4_K, Q5_K).
struct QuantMatmulProblem {
  int64_t m = 0, k = 0, n = 0;  // K a multiple of quant_block_weights(type)
  const float* x = nullptr;
  const uint8_t* w = nullptr;
  QuantType type = QuantType::kQ8_0;
  float* y = nullptr;
};

struct KernelTable {
  const char* name;
  void (*matmul)(const matmul::MatmulProblem&);
  void (*quant_matmul)(const QuantMatmulProblem&);
  void (*attend)(const attention::PagedAttentionProblem&);
  // y[r, :] = silu(x[r, :width]) * x[r, width:] for rows [begin, end) of x [rows, 2 width].
  void (*silu_mul_rows)(const float* x, int64_t begin, int64_t end, int64_t width, float* y);
  // Q8 activation blocks of `k` floats (k a multiple of 32): q [k] int8, d [k / 32], s [k / 32] = d * sum(q).
  void (*quantize_row)(const float* x, int64_t k, int8_t* q, float* d, float* s);
};

#if defined(__x86_64__) || defined(_M_X64)
const KernelTable& kernels_scalar();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernels_avx512_bf16();
#elif defined(__aarch64__)
const KernelTable& kernels_scalar();
const KernelTable& kernels_neon();
const KernelTable& kernels_neon_dotprod();
#else
const KernelTable& kernels_scalar();
#endif

}  // namespace surge::cpu
