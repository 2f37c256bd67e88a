// Which CPU kernel variant runs, seen from Python: surge._C.cpu_isa() (its name),
// cpu_isas() (every variant of this build: name, supported, needs) and set_cpu_isa(name).
// At import, SURGE_CPU_ISA (if set) is checked here so that a name this machine cannot run
// fails loudly (ValueError naming the missing features) instead of being ignored.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>

#include "cpu/isa.h"

namespace surge {

void bind_cpu_isa(pybind11::module_& m) {
  namespace py = pybind11;
  if (const char* env = std::getenv("SURGE_CPU_ISA"); env != nullptr && *env != '\0') cpu::set_isa(env);
  m.def(
      "cpu_isa", [] { return std::string(cpu::kernels().name); },
      "The instruction-set variant the CPU kernels run now (scalar, avx2, avx512, avx512_bf16, neon, neon_dotprod).");
  m.def(
      "cpu_isas",
      [] {
        py::list out;
        for (const auto& info : cpu::isas()) {
          py::dict d;
          d["name"] = info.name;
          d["supported"] = info.supported;
          d["needs"] = info.needs;
          out.append(d);
        }
        return out;
      },
      "Every variant in this build, lowest first: name, supported (by this machine), needs (features).");
  m.def(
      "set_cpu_isa", [](const std::string& name) { cpu::set_isa(name); }, py::arg("name"),
      "Run the CPU kernels in the named variant ('auto' = the best this machine supports); "
      "ValueError for an unknown name or one the machine lacks.");
}

}  // namespace surge
