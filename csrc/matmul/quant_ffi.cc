// The CPU matmul on GGUF-quantized weights as an XLA FFI target (SurgeCpuQuantMatmul).
//
// In (FFI operands): x [M, K] float32 and w uint8 [N, K / B, block_bytes] — N rows of
// GGUF blocks of B weights as the file stores them; block_bytes names the type (B = 32: 34 Q8_0,
// 18 Q4_0, 20 Q4_1; B = 256: 144 Q4_K, 176 Q5_K, 210 Q6_K; cpu/kernels.h). Out: y [M, N] float32 = x @ W^T, x quantized per block to int8,
// int32 block dots (cpu/kernels/quant_matmul.inc) in the variant picked at run time.
// bindings/module.cc hands it to Python in surge._C.ffi_targets().
#include <string>

#include "cpu/isa.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace surge {
namespace {

std::string dims_string(ffi::AnyBuffer::Dimensions dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

bool type_of_block(int64_t block_bytes, cpu::QuantType* type) {
  for (cpu::QuantType t : {cpu::QuantType::kQ8_0, cpu::QuantType::kQ4_0, cpu::QuantType::kQ4_1, cpu::QuantType::kQ4_K,
                           cpu::QuantType::kQ5_K, cpu::QuantType::kQ6_K}) {
    if (cpu::quant_block_bytes(t) == block_bytes) {
      *type = t;
      return true;
    }
  }
  return false;
}

ffi::Error cpu_quant_matmul(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto yd = y->dimensions();
  if (x.element_type() != ffi::DataType::F32 || y->element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("surge cpu quantized matmul: x and y must be float32");
  }
  if (w.element_type() != ffi::DataType::U8 || wd.size() != 3) {
    return ffi::Error::InvalidArgument("surge cpu quantized matmul: w must be uint8 [N, K / block, block_bytes], got " +
                                       dims_string(wd));
  }
  cpu::QuantMatmulProblem p;
  if (!type_of_block(wd[2], &p.type)) {
    return ffi::Error::InvalidArgument("surge cpu quantized matmul: block_bytes " + std::to_string(wd[2]) +
                                       " is none of Q8_0 (34), Q4_0 (18), Q4_1 (20), Q4_K (144), Q5_K (176), "
                                       "Q6_K (210)");
  }
  const int64_t block_weights = cpu::quant_block_weights(p.type);
  if (xd.size() != 2 || xd[1] != wd[1] * block_weights) {
    return ffi::Error::InvalidArgument("surge cpu quantized matmul: x must be [M, K] with K = " +
                                       std::to_string(wd[1] * block_weights) + " (w is " + dims_string(wd) +
                                       "), got " + dims_string(xd));
  }
  p.m = xd[0];
  p.k = xd[1];
  p.n = wd[0];
  if (yd.size() != 2 || yd[0] != p.m || yd[1] != p.n) {
    return ffi::Error::InvalidArgument("surge cpu quantized matmul: y must be [M, N] = [" + std::to_string(p.m) +
                                       ", " + std::to_string(p.n) + "], got " + dims_string(yd));
  }
  if (p.m == 0 || p.n == 0) return ffi::Error::Success();
  p.x = static_cast<const float*>(x.untyped_data());
  p.w = static_cast<const uint8_t*>(w.untyped_data());
  p.y = static_cast<float*>(y->untyped_data());
  cpu::kernels().quant_matmul(p);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SurgeCpuQuantMatmul, cpu_quant_matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // w
                                  .Ret<ffi::AnyBuffer>());  // y

}  // namespace surge
