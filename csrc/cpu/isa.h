// Which kernel variant runs: detected once from the CPU, overridable to any lower variant.
//
// In: the processor's features (cpuid + the OS's saved register state on x86, hwcaps on
// AArch64) and, at first use, the environment variable SURGE_CPU_ISA (a variant name, or
// "auto"). Out: kernels() — the KernelTable of the variant in force; isa_names() — the
// variants this machine can run, lowest first; set_isa(name) — switch (tests, config).
// A variant the machine lacks is refused with an error naming the missing features.
#pragma once

#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace surge::cpu {

// The table in force (the best supported variant unless SURGE_CPU_ISA or set_isa chose another).
const KernelTable& kernels();

// Variants compiled into this build, lowest first, with the features each needs.
struct IsaInfo {
  const char* name;
  const char* needs;  // human-readable feature list
  bool supported;     // this machine (and its OS) provides every needed feature
  const KernelTable& (*table)();
};
const std::vector<IsaInfo>& isas();

// Switches to the named variant ("auto" = the best supported); throws std::invalid_argument
// for an unknown name or one this machine cannot run, saying which features it lacks.
void set_isa(const std::string& name);

}  // namespace surge::cpu
