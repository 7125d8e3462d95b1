// Backward of every scan (one instantiation per route family and dtype).
#include "scan_dispatch.h"

namespace xscan {
namespace cpu {

void scan_backward(int64_t kind, const std::vector<int64_t>& geometry, const ScanInputs& in, const Tensors& dy,
                   const OptTensor& dlast, const Tensors& du, const Tensors& ddt, const Tensors& dB,
                   const Tensors& dC, const OptTensor& dz, const at::Tensor& dA, const OptTensor& dD,
                   const OptTensor& dbias) {
  with_dtype(in.u[0].scalar_type(), [&](auto scalar_tag, auto acc_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc_t = decltype(acc_tag);
    ScanViews<scalar_t, acc_t> v = input_views<scalar_t, acc_t>(in);
    for (size_t m = 0; m < dy.size(); ++m) {
      v.dy[m] = strided<const acc_t>(dy[m]);
      v.du[m] = strided<acc_t>(du[m]);
      v.ddt[m] = strided<acc_t>(ddt[m]);
    }
    v.dlast = strided<const acc_t>(dlast);
    v.dz = strided<acc_t>(dz);
    with_route(kind, geometry, [&](const auto& route) { run_backward(v, route, dB, dC, dA, dD, dbias); });
  });
}

}  // namespace cpu
}  // namespace xscan
