// Closes the variant opened by cpu/simd/begin.h.
#ifdef SURGE_ISA_TARGET
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
