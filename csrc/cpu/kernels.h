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
enum class QuantType : int { kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8 };
constexpr int64_t kQuantBlock = 32;  // weights per block, all three types

// Bytes of one block of 32 weights: Q8_0 {f16 d; int8 q[32]}, Q4_0 {f16 d; uint8 q[16]},
// Q4_1 {f16 d; f16 m; uint8 q[16]} (low nibbles are weights 0-15, high nibbles 16-31;
// Q8_0: w = d q, Q4_0: w = d (q - 8), Q4_1: w = d q + m).
inline int64_t quant_block_bytes(QuantType t) {
  switch (t) {
    case QuantType::kQ8_0: return 34;
    case QuantType::kQ4_0: return 18;
    case QuantType::kQ4_1: return 20;
  }
  return 0;
}

// y [M, N] float32 = x [M, K] @ W^T, W [N, K] stored as N rows of K / 32 GGUF blocks.
// x is first quantized per block of 32 to int8 (d = max|x| / 127, q = round(x / d)), then
// each output is sum over blocks of d_w d_x (int32 dot of q_w, q_x), plus the min term for Q4_1.
struct QuantMatmulProblem {
  int64_t m = 0, k = 0, n = 0;  // K a multiple of 32
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
