// Forward of every scan (one instantiation per route policy and dtype).
#include "scan_dispatch.h"

namespace xscan {
namespace cpu {

void scan_forward(int64_t route, int64_t source, const std::vector<int64_t>& geometry, const ScanInputs& in,
                  const Tensors& y, const OptTensor& last_state, const OptTensor& checkpoints) {
  const ScanShape s = check_inputs(route, source, geometry, in);
  check_maps(s, y, s.y_map, in.u.size(), "y");
  if (last_state) expect_sizes(*last_state, {s.batch, s.routes, s.channels, s.dstate}, "last_state");
  check_checkpoints(s, checkpoints, in.u[0].scalar_type());
  with_dtype(in.u[0].scalar_type(), [&](auto scalar_tag, auto acc_tag) {
    using scalar_t = decltype(scalar_tag);
    using acc_t = decltype(acc_tag);
    ScanViews<scalar_t, acc_t> v = input_views<scalar_t, acc_t>(in);
    for (size_t m = 0; m < y.size(); ++m) v.y[m] = strided<acc_t>(y[m]);
    v.last_state = strided<acc_t>(last_state);
    v.checkpoints = strided<acc_t>(checkpoints);
    with_route(route, source, geometry, [&](const auto& route) { run_forward(v, route); });
  });
}

}  // namespace cpu
}  // namespace xscan
