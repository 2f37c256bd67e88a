// Runtime choice of the CPU kernel variant (see cpu/isa.h). Compiled for the build's baseline.
#include "cpu/isa.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace surge::cpu {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
struct X86Features {
  bool avx2 = false, fma = false, f16c = false, bmi2 = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512vnni = false, avx512bf16 = false;
  bool os_ymm = false, os_zmm = false;  // the OS saves the wider registers on a context switch
};

X86Features detect_x86() {
  X86Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  if (osxsave) {
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    f.os_ymm = (lo & 0x6u) == 0x6u;     // SSE + AVX state
    f.os_zmm = (lo & 0xe6u) == 0xe6u;   // + opmask and both halves of zmm
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.avx2 = b & (1u << 5);
    f.bmi2 = b & (1u << 8);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512vnni = c & (1u << 11);
  }
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512bf16 = a & (1u << 5);
  return f;
}

bool has_avx2(const X86Features& f) { return f.os_ymm && f.avx2 && f.fma && f.f16c && f.bmi2; }
bool has_avx512(const X86Features& f) {
  return has_avx2(f) && f.os_zmm && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
}
bool has_avx512_bf16(const X86Features& f) { return has_avx512(f) && f.avx512vnni && f.avx512bf16; }

std::vector<IsaInfo> build_isas() {
  const X86Features f = detect_x86();
  return {
      {"scalar", "nothing", true, &kernels_scalar},
      {"avx2", "AVX2, FMA, F16C, BMI2", has_avx2(f), &kernels_avx2},
      {"avx512", "AVX-512 F/BW/VL/DQ (+ the avx2 set)", has_avx512(f), &kernels_avx512},
      {"avx512_bf16", "AVX-512 VNNI and BF16 (+ the avx512 set)", has_avx512_bf16(f), &kernels_avx512_bf16},
  };
}
#elif defined(__aarch64__)
std::vector<IsaInfo> build_isas() {
  bool dotprod = false;
#if defined(__linux__)
  dotprod = getauxval(AT_HWCAP) & (1ul << 20);  // HWCAP_ASIMDDP
#elif defined(__APPLE__)
  dotprod = true;  // every Apple silicon core has the dot-product extension
#endif
  return {
      {"scalar", "nothing", true, &kernels_scalar},
      {"neon", "AArch64 Advanced SIMD", true, &kernels_neon},
      {"neon_dotprod", "Advanced SIMD dot product (asimddp)", dotprod, &kernels_neon_dotprod},
  };
}
#else
std::vector<IsaInfo> build_isas() { return {{"scalar", "nothing", true, &kernels_scalar}}; }
#endif

const IsaInfo& best() {
  const auto& all = isas();
  for (auto it = all.rbegin(); it != all.rend(); ++it)
    if (it->supported) return *it;
  return all.front();
}

const IsaInfo& find(const std::string& name) {
  if (name == "auto") return best();
  std::string known;
  for (const auto& info : isas()) {
    if (name == info.name) {
      if (!info.supported) {
        throw std::invalid_argument("cpu isa '" + name + "' needs " + info.needs +
                                    ", which this processor (or its OS) lacks; best here: " + best().name);
      }
      return info;
    }
    known += (known.empty() ? "" : ", ") + std::string(info.name);
  }
  throw std::invalid_argument("unknown cpu isa '" + name + "'; this build has auto, " + known);
}

const KernelTable* initial_table() {
  const char* env = std::getenv("SURGE_CPU_ISA");
  if (env == nullptr || *env == '\0') return &best().table();
  try {
    return &find(env).table();
  } catch (const std::invalid_argument& error) {
    // A bad override must not pass silently, nor crash the process from a static initializer
    // inside an FFI call: surge._C's import checks it first and raises (bindings), so this is
    // only reached when the kernels are used without that check.
    std::fprintf(stderr, "surge: SURGE_CPU_ISA ignored: %s\n", error.what());
    return &best().table();
  }
}

std::atomic<const KernelTable*>& current() {
  static std::atomic<const KernelTable*> table{initial_table()};
  return table;
}

}  // namespace

const std::vector<IsaInfo>& isas() {
  static const std::vector<IsaInfo> all = build_isas();
  return all;
}

const KernelTable& kernels() { return *current().load(std::memory_order_acquire); }

void set_isa(const std::string& name) { current().store(&find(name).table(), std::memory_order_release); }

}  // namespace surge::cpu
