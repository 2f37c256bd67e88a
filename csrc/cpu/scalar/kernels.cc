// The scalar variant of the CPU kernels (see cpu/kernels.h): ISA-neutral sources over cpu/scalar/vec.h.
#define SURGE_ISA_SCALAR 1
#include "cpu/variant_prelude.h"
#include "cpu/simd/begin.h"
#include "cpu/scalar/vec.h"
#include "cpu/scalar/qdot.h"
#include "cpu/kernels/variant.inc"
#include "cpu/simd/end.h"
