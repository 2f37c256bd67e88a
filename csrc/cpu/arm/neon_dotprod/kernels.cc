// The neon_dotprod (NEON + sdot) variant of the CPU kernels (see cpu/kernels.h): ISA-neutral sources over cpu/arm/neon/vec.h.
#define SURGE_ISA_NEON_DOTPROD 1
#include "cpu/variant_prelude.h"
#include "cpu/simd/begin.h"
#include "cpu/arm/neon/vec.h"
#include "cpu/arm/qdot.h"
#include "cpu/kernels/variant.inc"
#include "cpu/simd/end.h"
