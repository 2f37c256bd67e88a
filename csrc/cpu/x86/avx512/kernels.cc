// The avx512 variant of the CPU kernels (see cpu/kernels.h): ISA-neutral sources over cpu/x86/avx512/vec.h.
#define SURGE_ISA_AVX512 1
#include "cpu/variant_prelude.h"
#include "cpu/simd/begin.h"
#include "cpu/x86/avx512/vec.h"
#include "cpu/x86/qdot.h"
#include "cpu/x86/qpanel.h"
#include "cpu/kernels/variant.inc"
#include "cpu/simd/end.h"
