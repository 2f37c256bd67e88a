// Opens one instruction-set variant of the CPU kernels: included by csrc/cpu/<isa>/kernels.cc
// after every standard header the kernels use, with exactly one SURGE_ISA_<NAME> defined.
//
// Out: SURGE_ISA_NS (the variant's namespace, surge::cpu::<name>), SURGE_ISA_NAME, and the
// compiler's target switched to the variant's instructions for everything up to simd/end.h.
// Why a pragma region and not per-file -m flags: the standard library's inline functions
// (std::vector, std::function, <algorithm>) are compiled before the region, for the build's
// baseline, so the linker's choice among duplicate inline copies can never hand scalar code
// an AVX-512 body; everything defined inside the region lives in the variant's namespace.
#pragma once

#if defined(SURGE_ISA_SCALAR)
#define SURGE_ISA_NS scalar
#define SURGE_ISA_NAME "scalar"
#elif defined(SURGE_ISA_AVX2)
#define SURGE_ISA_NS avx2
#define SURGE_ISA_NAME "avx2"
#define SURGE_ISA_TARGET "avx2,fma,f16c,bmi2"
#elif defined(SURGE_ISA_AVX512)
#define SURGE_ISA_NS avx512
#define SURGE_ISA_NAME "avx512"
#define SURGE_ISA_TARGET "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512dq"
#elif defined(SURGE_ISA_AVX512_BF16)
#define SURGE_ISA_NS avx512_bf16
#define SURGE_ISA_NAME "avx512_bf16"
#define SURGE_ISA_TARGET "avx2,fma,f16c,bmi2,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16"
#elif defined(SURGE_ISA_NEON)
#define SURGE_ISA_NS neon
#define SURGE_ISA_NAME "neon"
#elif defined(SURGE_ISA_NEON_DOTPROD)
#define SURGE_ISA_NS neon_dotprod
#define SURGE_ISA_NAME "neon_dotprod"
#define SURGE_ISA_TARGET "arch=armv8.2-a+dotprod"
#else
#error "define one SURGE_ISA_<NAME> before including cpu/simd/begin.h"
#endif

#ifdef SURGE_ISA_TARGET
#if defined(__clang__)
#define SURGE_PRAGMA(x) _Pragma(#x)
#define SURGE_TARGET_PUSH(t) SURGE_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
SURGE_TARGET_PUSH(SURGE_ISA_TARGET)
#else
#pragma GCC push_options
#define SURGE_PRAGMA(x) _Pragma(#x)
#define SURGE_TARGET_PUSH(t) SURGE_PRAGMA(GCC target(t))
SURGE_TARGET_PUSH(SURGE_ISA_TARGET)
#endif
#endif
