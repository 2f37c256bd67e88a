// SiLU-and-multiply of a gated MLP as an XLA FFI target (SurgeCpuSiluMul).
//
// In: x [M, 2 I] float32, the gate in its first I columns and the up projection in the
// last I. Out: y [M, I] float32 = silu(gate) * up, silu(g) = g / (1 + e^-g).
// XLA:CPU evaluates this elementwise with a slow exp; here it runs a vector at a time with
// the kernels' exp, in the variant picked at run time (cpu/isa.h), rows spread over the
// shared CpuPool. bindings/module.cc hands it to Python in surge._C.ffi_targets().
#include <algorithm>
#include <cmath>
#include <string>

#include "cpu/isa.h"
#include "common/pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace surge {
namespace {

constexpr int64_t kRowsPerItem = 8;
constexpr int64_t kMinParallelElements = 1 << 14;  // below this, waking a helper costs more than it saves

ffi::Error cpu_silu_mul(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  if (x.element_type() != ffi::DataType::F32 || y->element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("surge cpu silu_mul: x and y must be float32");
  }
  if (xd.size() != 2 || xd[1] % 2 != 0 || yd.size() != 2 || yd[0] != xd[0] || yd[1] * 2 != xd[1]) {
    return ffi::Error::InvalidArgument("surge cpu silu_mul: x must be [M, 2 I] and y [M, I]");
  }
  const int64_t rows = xd[0];
  const int64_t width = yd[1];
  const float* in = static_cast<const float*>(x.untyped_data());
  float* out = static_cast<float*>(y->untyped_data());
  if (rows * width < kMinParallelElements) {
    cpu::kernels().silu_mul_rows(in, 0, rows, width, out);
    return ffi::Error::Success();
  }
  const int64_t items = (rows + kRowsPerItem - 1) / kRowsPerItem;
  CpuPool::global().run(items, [&](int64_t i) {
    cpu::kernels().silu_mul_rows(in, i * kRowsPerItem, std::min(rows, (i + 1) * kRowsPerItem), width, out);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SurgeCpuSiluMul, cpu_silu_mul,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

}  // namespace surge
