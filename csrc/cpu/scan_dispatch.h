// From the binding's tensors to the engine: route policy and dtype dispatch, view setup.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Optional.h>

#include <type_traits>
#include <vector>

#include "scan_engine.h"
#include "scan_routes.h"

namespace xscan {
namespace cpu {

using OptTensor = c10::optional<at::Tensor>;
using Tensors = std::vector<at::Tensor>;

// Route families, numbered as xscan/backends/cpu.py passes them, with their geometry vector.
enum RouteKind : int64_t {
  kCross = 0,      // [H, W]            selective_scan (H = 1, W = L), ss2d
  kAtrous = 1,     // [H, W]            es2d
  kCrossPair = 2,  // [H, W]            cross_ss2d
  kRealign = 3,    // [Hr, Wr, C, W, mode, axis]   interleave_ss2d
  kHeads = 4,      // [P, L]            ssd_exchange
};

template <typename F>
void with_route(int64_t kind, const std::vector<int64_t>& g, F&& f) {
  auto need = [&](size_t n) { TORCH_CHECK(g.size() == n, "xscan._C: route ", kind, " takes ", n, " sizes"); };
  switch (kind) {
    case kCross: need(2); return f(CrossRoutes(g[0], g[1]));
    case kAtrous: need(2); return f(AtrousRoutes(g[0], g[1]));
    case kCrossPair: need(2); return f(CrossPairRoutes(g[0], g[1]));
    case kRealign:
      need(6);
      return f(RealignRoutes{g[0], g[1], g[2], g[3], static_cast<int32_t>(g[4]), static_cast<int32_t>(g[5])});
    case kHeads: need(2); return f(HeadRoutes(g[0], g[1]));
    default: TORCH_CHECK(false, "xscan._C: unknown route kind ", kind);
  }
}

// The inputs every scan takes (see ScanViews for the layouts).
struct ScanInputs {
  Tensors u, dt, B, C;
  OptTensor z;
  at::Tensor A;
  OptTensor D, bias;
  bool delta_softplus;
};

template <typename scalar_t, typename acc_t>
ScanViews<scalar_t, acc_t> input_views(const ScanInputs& in) {
  TORCH_CHECK(!in.u.empty() && in.u.size() <= 2 && in.dt.size() == in.u.size() && in.B.size() == in.u.size() &&
                  in.C.size() == in.u.size(),
              "xscan._C: one or two modalities of u, dt, B, C");
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  TORCH_CHECK(in.A.scalar_type() == acc && in.A.dim() == 3, "xscan._C: A must be (K, Dm, N) ", acc);
  for (const OptTensor* p : {&in.D, &in.bias})
    TORCH_CHECK(!p->has_value() || ((*p)->scalar_type() == acc && (*p)->dim() == 2), "xscan._C: D and delta_bias must be (K, Dm) ", acc);
  TORCH_CHECK(!in.z.has_value() || in.z->dim() == 4, "xscan._C: z must be a 4-D pixel view");
  ScanViews<scalar_t, acc_t> v;
  v.batch = in.u[0].size(0);
  v.routes = in.dt[0].size(1);
  v.channels = in.dt[0].size(2);
  v.dstate = in.A.size(2);
  v.groups_B = in.B[0].size(2);
  v.groups_C = in.C[0].size(2);
  v.delta_softplus = in.delta_softplus;
  for (size_t m = 0; m < in.u.size(); ++m) {
    for (const at::Tensor* t : {&in.u[m], &in.dt[m], &in.B[m], &in.C[m]})
      TORCH_CHECK(t->scalar_type() == c10::CppTypeToScalarType<scalar_t>::value,
                  "xscan._C: per-token tensors must share one dtype");
    TORCH_CHECK(in.u[m].dim() == 4 && in.dt[m].dim() == 4 && in.B[m].dim() == 5 && in.C[m].dim() == 5,
                "xscan._C: u, dt must be 4-D and B, C 5-D views");
    v.u[m] = strided<const scalar_t>(in.u[m]);
    v.dt[m] = strided<const scalar_t>(in.dt[m]);
    v.B[m] = strided<const scalar_t>(in.B[m]);
    v.C[m] = strided<const scalar_t>(in.C[m]);
  }
  v.z = strided<const scalar_t>(in.z);
  v.A = strided<const acc_t>(in.A);
  v.D = strided<const acc_t>(in.D);
  v.bias = strided<const acc_t>(in.bias);
  return v;
}

// Calls f(scalar_t{}, acc_t{}) (type tags) for the per-token dtype: fp32 accumulation for
// half, bfloat16 and float, fp64 for double.
template <typename F>
void with_dtype(at::ScalarType type, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, "xscan_cpu_scan", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    f(scalar_t{}, acc_t{});
  });
}

}  // namespace cpu
}  // namespace xscan
