// A CPU matmul for the few-token steps of decoding, independent of XLA.
//
// In: a MatmulProblem — x [M, K] float32 (row-major) and a weight W, float32 or
// bfloat16, stored [K, N] (a projection as surge stores it), [N, K] (an embedding
// table read as its own transpose, for a tied lm_head), or packed into panels: the
// columns of [K, N] cut into panels of kPanelColumns (the last may be narrower, a
// multiple of 16, so every variant's vectors divide it), each panel stored whole, row after row ([K, width] contiguous), so a
// thread owning a run of panels streams one contiguous stretch of memory.
// Out: y [M, N] float32 = x @ W (or x @ W^T for [N, K]); every product is summed
// in float32, bfloat16 weights are widened in registers. The kernel variant of the
// instruction set picked at run time (cpu/isa.h) does the work.
// The columns of y are split into blocks that CpuPool::global() runs on its
// threads; a block is owned by one thread, so no partial sums are combined and the
// result does not depend on the number of threads.
#pragma once

#include <cstdint>

namespace surge::matmul {

enum class WeightType { kFloat32, kBFloat16 };
// kKN: W[k, n] at k * N + n; kNK: at n * K + k; kPanels: at p * 48 * K + k * width + n % 48,
// p = n / 48, width = min(48, N - 48 p) (N must be a multiple of kPanelMultiple).
enum class WeightLayout { kKN, kNK, kPanels };
constexpr int64_t kPanelColumns = 48;
constexpr int64_t kPanelMultiple = 16;

struct MatmulProblem {
  int64_t m = 0;
  int64_t k = 0;
  int64_t n = 0;
  const float* x = nullptr;  // [M, K]
  const void* w = nullptr;   // [K, N] or [N, K], per layout
  WeightType w_type = WeightType::kFloat32;
  WeightLayout layout = WeightLayout::kKN;
  float* y = nullptr;  // [M, N]
};

// Fills p.y. Any sizes >= 0 work (K = 0 gives zeros); pointers must cover the shapes.
void matmul(const MatmulProblem& p);

}  // namespace surge::matmul
