// The CPU matmul as an XLA FFI target (SurgeCpuMatmul).
//
// In (FFI operands): x [M, K] float32 and w, float32 or bfloat16, [K, N] — or [N, K]
// when the attribute transpose_w is true (an embedding table used as a tied lm_head),
// or, when the attribute panels is true, 1-D [K * N] packed into panels (matmul/panels.h;
// N is then read from y).
// Out: y [M, N] float32 = x @ w (x @ w^T when transposed). Shapes come from the buffers,
// so one compiled target serves every M. Also SurgeCpuGroupedMatmul, the mixture-of-experts
// projection below. bindings/module.cc hands both to Python in surge._C.ffi_targets(); which
// instruction set runs is surge._C.cpu_isa() (bindings/cpu_isa.cc).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "matmul/panels.h"
#include "common/pool.h"
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

// The mixture-of-experts projection: rows of x grouped by expert, each group times its own
// expert's weight. x [M, K] float32 (group g = the next group_sizes[g] rows), w [G, K, N] float32
// or bfloat16 — or, with panels, [G, K * N], each expert's [K, N] packed as matmul/panels.h describes
// (N then read from y) — and group_sizes int32 [G]. y [M, N] float32; rows past the groups' sum
// are zeros. Each group is one matmul over its rows that reads only its expert's weights, so the
// work is the routed rows, not every row against every expert.
ffi::Error cpu_grouped_matmul(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Buffer<ffi::S32> group_sizes, bool panels,
                              ffi::Result<ffi::AnyBuffer> y) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto yd = y->dimensions();
  auto gd = group_sizes.dimensions();
  if (x.element_type() != ffi::DataType::F32 || y->element_type() != ffi::DataType::F32) {
    return ffi::Error::InvalidArgument("surge cpu grouped matmul: x and y must be float32");
  }
  matmul::MatmulProblem base;
  if (w.element_type() == ffi::DataType::F32) {
    base.w_type = matmul::WeightType::kFloat32;
  } else if (w.element_type() == ffi::DataType::BF16) {
    base.w_type = matmul::WeightType::kBFloat16;
  } else {
    return ffi::Error::InvalidArgument("surge cpu grouped matmul: w must be float32 or bfloat16");
  }
  if (xd.size() != 2 || yd.size() != 2 || yd[0] != xd[0]) {
    return ffi::Error::InvalidArgument("surge cpu grouped matmul: x must be [M, K] and y [M, N], got x " +
                                       shape_string(xd) + " and y " + shape_string(yd));
  }
  const int64_t rows = xd[0];
  base.k = xd[1];
  base.n = yd[1];
  const int64_t groups = gd.size() == 1 ? gd[0] : -1;
  const bool shape_ok = panels ? (wd.size() == 2 && wd[0] == groups && wd[1] == base.k * base.n)
                               : (wd.size() == 3 && wd[0] == groups && wd[1] == base.k && wd[2] == base.n);
  if (!shape_ok) {
    return ffi::Error::InvalidArgument(std::string("surge cpu grouped matmul: w must be ") +
                                       (panels ? "[G, K * N]" : "[G, K, N]") + " with G = " +
                                       std::to_string(groups) + " groups, K = " + std::to_string(base.k) +
                                       ", N = " + std::to_string(base.n) + ", got " + shape_string(wd));
  }
  if (panels && base.n % matmul::kPanelMultiple != 0) {
    return ffi::Error::InvalidArgument("surge cpu grouped matmul: packed w needs N a multiple of 16, got N = " +
                                       std::to_string(base.n));
  }
  base.layout = panels ? matmul::WeightLayout::kPanels : matmul::WeightLayout::kKN;
  const int32_t* sizes = group_sizes.typed_data();
  const float* xs = static_cast<const float*>(x.untyped_data());
  float* ys = static_cast<float*>(y->untyped_data());
  const int64_t w_bytes = base.k * base.n * (base.w_type == matmul::WeightType::kFloat32 ? 4 : 2);
  int64_t start = 0;
  for (int64_t g = 0; g < groups; ++g) {
    if (sizes[g] < 0 || start + sizes[g] > rows) {
      return ffi::Error::InvalidArgument("surge cpu grouped matmul: group_sizes[" + std::to_string(g) + "] = " +
                                         std::to_string(sizes[g]) + " runs past the " + std::to_string(rows) +
                                         " rows of x (after " + std::to_string(start) + ")");
    }
    if (sizes[g] == 0) continue;
    matmul::MatmulProblem p = base;
    p.m = sizes[g];
    p.x = xs + start * base.k;
    p.w = static_cast<const char*>(w.untyped_data()) + g * w_bytes;
    p.y = ys + start * base.n;
    matmul::matmul(p);
    start += sizes[g];
  }
  std::fill(ys + start * base.n, ys + rows * base.n, 0.0f);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SurgeCpuGroupedMatmul, cpu_grouped_matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // w
                                  .Arg<ffi::Buffer<ffi::S32>>()  // group_sizes
                                  .Attr<bool>("panels")
                                  .Ret<ffi::AnyBuffer>());  // y

XLA_FFI_DEFINE_HANDLER_SYMBOL(SurgeCpuMatmul, cpu_matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // w
                                  .Attr<bool>("transpose_w")
                                  .Attr<bool>("panels")
                                  .Ret<ffi::AnyBuffer>());  // y

}  // namespace surge
