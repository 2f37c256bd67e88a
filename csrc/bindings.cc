// surge._C: the native layer. Each concept binds itself from its own file.
#include <pybind11/pybind11.h>

namespace surge {
void bind_block_allocator(pybind11::module_& m);
void bind_cpu_attention(pybind11::module_& m);
void bind_cpu_matmul(pybind11::module_& m);
void bind_cpu_silu_mul(pybind11::module_& m);
void bind_cpu_quant_matmul(pybind11::module_& m);
void bind_cpu_isa(pybind11::module_& m);
}  // namespace surge

PYBIND11_MODULE(_C, m) {
  m.doc() = "surge native layer: KV block allocator, CPU paged-attention, matmul (float and GGUF-quantized) and SiLU-and-multiply FFI kernels in the instruction-set variant picked at run time";
  surge::bind_block_allocator(m);
  surge::bind_cpu_attention(m);
  surge::bind_cpu_matmul(m);
  surge::bind_cpu_silu_mul(m);
  surge::bind_cpu_quant_matmul(m);
  surge::bind_cpu_isa(m);
}
