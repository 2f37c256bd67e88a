// What every kernel variant's translation unit (cpu/<arch>/<isa>/kernels.cc) includes before
// cpu/simd/begin.h: the standard headers, the intrinsics, and surge's shared (baseline)
// headers, so that none of their inline functions is compiled for the variant's target.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "attention/kernel.h"
#include "common/numeric.h"
#include "common/pool.h"
#include "cpu/kernels.h"
#include "matmul/panels.h"
#include "matmul/work.h"
