#include <pybind11/pybind11.h>
namespace surge {
void bind_cpu_attention(pybind11::module_& m) { (void)m; }
}  // namespace surge
