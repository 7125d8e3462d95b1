// Backward of every scan (one instantiation per route policy and dtype).
#include "scan_dispatch.h"

namespace xscan {
namespace cpu {

void scan_backward(int64_t route, int64_t source, const std::vector<int64_t>& geometry, const ScanInputs& in,
                   const Tensors& dy, const OptTensor& dlast, const Tensors& du, const Tensors& ddt, const Tensors& dB,
                   const Tensors& dC, const OptTensor& dz, const at::Tensor& dA, const OptTensor& dD,
                   const OptTensor& dbias, const OptTensor& checkpoints) {
  const ScanShape s = check_inputs(route, source, geometry, in);
  const size_t M = in.u.size();
  check_maps(s, dy, s.y_map, M, "dy");
  check_maps(s, du, s.u_map, M, "du");
  expect_sizes(ddt, {s.batch, s.routes, s.channels, s.tokens}, M, "ddt");
  expect_sizes(dB, {s.batch, s.routes, s.groups_B, s.dstate, s.tokens}, M, "dB");
  expect_sizes(dC, {s.batch, s.routes, s.groups_C, s.dstate, s.tokens}, M, "dC");
  if (dz) check_maps(s, {*dz}, s.u_map, 1, "dz");
  expect_sizes(dA, {s.routes, s.channels, s.dstate}, "dA");
  if (dD) expect_sizes(*dD, {s.routes, s.channels}, "dD");
  if (dbias) expect_sizes(*dbias, {s.routes, s.channels}, "ddelta_bias");
  if (dlast) expect_sizes(*dlast, {s.batch, s.routes, s.channels, s.dstate}, "dlast");
  check_checkpoints(s, checkpoints, in.u[0].scalar_type());
  TORCH_CHECK(dz.has_value() == in.z.has_value() && dD.has_value() == in.D.has_value() &&
                  dbias.has_value() == in.bias.has_value(),
              "xscan._C: a gradient buffer for every optional input that is given, none for one that is not");
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
    v.checkpoints = strided<acc_t>(checkpoints);
    with_route(route, source, geometry, [&](const auto& route) { run_backward(v, route, dB, dC, dA, dD, dbias); });
  });
}

}  // namespace cpu
}  // namespace xscan
