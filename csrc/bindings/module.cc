// surge._C: the native layer's one entry. The block allocator and the ISA choice bind
// themselves from their own files; every XLA FFI target is handed out here, in one dict
// (ffi_targets(), name -> PyCapsule, registered with jax once by surge.kernels.native), and
// the one thread pool that every CPU kernel shares is sized here (set_num_threads).
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "common/pool.h"
#include "xla/ffi/api/ffi.h"

namespace surge {
void bind_block_allocator(pybind11::module_& m);
void bind_cpu_isa(pybind11::module_& m);

// The FFI handlers, each defined beside its kernel (attention/ffi.cc, matmul/ffi.cc,
// matmul/quant_ffi.cc, activation/silu_mul_ffi.cc).
XLA_FFI_DECLARE_HANDLER_SYMBOL(SurgeCpuPagedAttention);
XLA_FFI_DECLARE_HANDLER_SYMBOL(SurgeCpuMatmul);
XLA_FFI_DECLARE_HANDLER_SYMBOL(SurgeCpuGroupedMatmul);
XLA_FFI_DECLARE_HANDLER_SYMBOL(SurgeCpuQuantMatmul);
XLA_FFI_DECLARE_HANDLER_SYMBOL(SurgeCpuSiluMul);
}  // namespace surge

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  m.doc() = "surge native layer: KV block allocator, CPU paged-attention, matmul (float and GGUF-quantized) and SiLU-and-multiply FFI kernels in the instruction-set variant picked at run time";
  surge::bind_block_allocator(m);
  surge::bind_cpu_isa(m);
  m.def(
      "ffi_targets",
      [] {
        py::dict targets;
        targets["surge_cpu_paged_attention"] = py::capsule(reinterpret_cast<void*>(&surge::SurgeCpuPagedAttention));
        targets["surge_cpu_matmul"] = py::capsule(reinterpret_cast<void*>(&surge::SurgeCpuMatmul));
        targets["surge_cpu_grouped_matmul"] = py::capsule(reinterpret_cast<void*>(&surge::SurgeCpuGroupedMatmul));
        targets["surge_cpu_quant_matmul"] = py::capsule(reinterpret_cast<void*>(&surge::SurgeCpuQuantMatmul));
        targets["surge_cpu_silu_mul"] = py::capsule(reinterpret_cast<void*>(&surge::SurgeCpuSiluMul));
        return targets;
      },
      "Every XLA FFI target of surge's CPU kernels: name -> PyCapsule for jax.ffi.register_ffi_target.");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 0) throw std::invalid_argument("num_threads must be >= 0 (0 = every core), got " + std::to_string(n));
        surge::CpuPool::global().set_num_threads(n);
      },
      py::arg("num_threads"),
      "Threads of the pool every CPU kernel (attention, matmul, SiLU-and-multiply) runs on, the caller "
      "included; 0 = every core.");
  m.def(
      "get_num_threads", [] { return surge::CpuPool::global().num_threads(); },
      "Threads the CPU kernels' pool uses now (every core when set to 0).");
}
