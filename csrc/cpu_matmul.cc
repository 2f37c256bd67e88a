// The CPU matmul as an XLA FFI target, bound into surge._C.
//
// In (FFI operands): x [M, K] float32 and w, float32 or bfloat16, [K, N] — or [N, K]
// when the attribute transpose_w is true (an embedding table used as a tied lm_head),
// or, when the attribute panels is true, 1-D [K * N] packed into panels (cpu_matmul.h;
// N is then read from y).
// Out: y [M, N] float32 = x @ w (x @ w^T when transposed). Shapes come from the buffers,
// so one compiled target serves every M. Python sees surge._C.cpu_matmul_ffi_targets()
// (name -> PyCapsule), set_cpu_matmul_threads(n) and cpu_matmul_threads(); which
// instruction set runs is surge._C.cpu_isa() (cpu_isa_bindings.cc).
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "cpu_matmul.h"
#include "cpu_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace surge {
namespace {

std::string shape_string(ffi::AnyBuffer::Dimensions dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

ffi::Error check_panels(const matmul::MatmulProblem& p, ffi::AnyBuffer::Dimensions wd) {
  if (wd.size() != 1 || wd[0] != p.k * p.n) {
    return ffi::Error::InvalidArgument("surge cpu matmul: packed w must be 1-D [K * N] = [" +
                                       std::to_string(p.k * p.n) + "], got " + shape_string(wd));
  }
  if (p.n % matmul::kPanelMultiple != 0) {
    return ffi::Error::InvalidArgument("surge cpu matmul: packed w needs N a multiple of 16, got N = " +
                                       std::to_string(p.n));
  }
  return ffi::Error::Success();
}

ffi::Error cpu_matmul(ffi::AnyBuffer x, ffi::AnyBuffer w, bool transpose_w, bool panels,
                      ffi::Result<ffi::AnyBuffer> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto yd = y->dimensions();
  if (x.element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("surge cpu matmul: x must be float32");
  }
  if (y->element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("surge cpu matmul: the result y must be float32");
  }
  matmul::MatmulProblem p;
  if (w.element_type() == ffi::DataType::F32) {
    p.w_type = matmul::WeightType::kFloat32;
  } else if (w.element_type() == ffi::DataType::BF16) {
    p.w_type = matmul::WeightType::kBFloat16;
  } else {
    return ffi::Error::InvalidArgument("surge cpu matmul: w must be float32 or bfloat16");
  }
  if (xd.size() != 2) return ffi::Error::InvalidArgument("surge cpu matmul: x must be [M, K], got " + shape_string(xd));
  p.m = xd[0];
  p.k = xd[1];
  p.x = static_cast<const float*>(x.untyped_data());
  p.w = w.untyped_data();
  p.y = static_cast<float*>(y->untyped_data());
  if (panels) {
    if (yd.size() != 2 || yd[0] != p.m) {
      return ffi::Error::InvalidArgument("surge cpu matmul: y must be [M, N] with M = " + std::to_string(p.m) +
                                         ", got " + shape_string(yd));
    }
    p.n = yd[1];
    if (auto error = check_panels(p, wd); error.failure()) return error;
    p.layout = matmul::WeightLayout::kPanels;
    matmul::matmul(p);
    return ffi::Error::Success();
  }
  const char* w_form = transpose_w ? "[N, K]" : "[K, N]";
  if (wd.size() != 2) {
    return ffi::Error::InvalidArgument(std::string("surge cpu matmul: w must be ") + w_form + ", got " +
                                       shape_string(wd));
  }
  p.n = transpose_w ? wd[0] : wd[1];
  int64_t w_depth = transpose_w ? wd[1] : wd[0];
  if (w_depth != p.k) {
    return ffi::Error::InvalidArgument(std::string("surge cpu matmul: w must be ") + w_form + " with K = " +
                                       std::to_string(p.k) + " (x is " + shape_string(xd) + "), got " +
                                       shape_string(wd));
  }
  if (yd.size() != 2 || yd[0] != p.m || yd[1] != p.n) {
    return ffi::Error::InvalidArgument("surge cpu matmul: y must be [M, N] = [" + std::to_string(p.m) + ", " +
                                       std::to_string(p.n) + "], got " + shape_string(yd));
  }
  p.layout = transpose_w ? matmul::WeightLayout::kNK : matmul::WeightLayout::kKN;
  matmul::matmul(p);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SurgeCpuMatmul, cpu_matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // w
                                  .Attr<bool>("transpose_w")
                                  .Attr<bool>("panels")
                                  .Ret<ffi::AnyBuffer>());  // y

void bind_cpu_matmul(pybind11::module_& m) {
  namespace py = pybind11;
  m.def(
      "cpu_matmul_ffi_targets",
      [] {
        py::dict targets;
        targets["surge_cpu_matmul"] = py::capsule(reinterpret_cast<void*>(&SurgeCpuMatmul));
        return targets;
      },
      "XLA FFI targets of the CPU matmul: name -> PyCapsule for jax.ffi.register_ffi_target.");
  m.def(
      "set_cpu_matmul_threads",
      [](int n) {
        if (n < 0) throw std::invalid_argument("num_threads must be >= 0 (0 = every core), got " + std::to_string(n));
        CpuPool::global().set_num_threads(n);
      },
      py::arg("num_threads"), "Threads the CPU matmul uses, the caller included; 0 = every core.");
  m.def(
      "cpu_matmul_threads", [] { return CpuPool::global().num_threads(); },
      "Threads the CPU matmul uses now.");
}

}  // namespace surge
