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

// The sizes of one call's views, from the route kind and geometry (see RouteKind) and the inputs.
// Every view is checked against them before any kernel runs, so that no index the engine computes
// leaves a buffer: the Python glue builds consistent views, this guards the extension's own entry.
struct ScanShape {
  int64_t batch, routes, channels, dstate, groups_B, groups_C, tokens;
  std::vector<int64_t> u_map, y_map;  // (channels, rows, cols) of u's and y's pixel maps
};

inline void expect_sizes(const at::Tensor& t, std::vector<int64_t> sizes, const char* name) {
  TORCH_CHECK(t.sizes() == at::IntArrayRef(sizes), "xscan._C: ", name, " has shape ", t.sizes(), ", expected ",
              at::IntArrayRef(sizes));
}

inline void expect_sizes(const Tensors& ts, const std::vector<int64_t>& sizes, size_t count, const char* name) {
  TORCH_CHECK(ts.size() == count, "xscan._C: ", count, " ", name, " views expected, got ", ts.size());
  for (const auto& t : ts) expect_sizes(t, sizes, name);
}

inline ScanShape check_inputs(int64_t kind, const std::vector<int64_t>& g, const ScanInputs& in) {
  const bool pair = kind == kCrossPair || kind == kRealign || kind == kHeads;
  const size_t M = pair ? 2 : 1;
  TORCH_CHECK(in.u.size() == M && in.dt.size() == M && in.B.size() == M && in.C.size() == M, "xscan._C: route kind ",
              kind, " takes ", M, " modalities of u, dt, B, C");
  TORCH_CHECK(in.dt[0].dim() == 4 && in.A.dim() == 3 && in.B[0].dim() == 5 && in.C[0].dim() == 5,
              "xscan._C: dt must be (Bt, K, Dm, E), A (K, Dm, N), B and C (Bt, K, G, N, E)");
  ScanShape s{in.dt[0].size(0), in.dt[0].size(1), in.dt[0].size(2), in.A.size(2), in.B[0].size(2), in.C[0].size(2), 0,
              {}, {}};
  TORCH_CHECK(s.groups_B > 0 && s.groups_C > 0 && s.channels % s.groups_B == 0 && s.channels % s.groups_C == 0,
              "xscan._C: B and C groups must divide the channels");
  const int64_t K = s.routes;
  switch (kind) {
    case kCross:
    case kAtrous:
    case kCrossPair:
      TORCH_CHECK(g.size() == 2 && g[0] > 0 && g[1] > 0 && K >= 1 && K <= 4, "xscan._C: bad map geometry or routes");
      s.tokens = kind == kAtrous ? atrous_extent(g[0]) * atrous_extent(g[1]) : g[0] * g[1];
      s.u_map = s.y_map = {s.channels, g[0], g[1]};
      break;
    case kRealign: {
      TORCH_CHECK(g.size() == 6 && g[4] >= 0 && g[4] <= 2 && g[5] >= 0 && g[5] <= 1 && K >= 1 && K <= 4,
                  "xscan._C: bad realign geometry or routes");
      const int64_t Hr = g[0], Wr = g[1], C = g[2], W = g[3];
      const bool on_channels = g[4] == kRealignConcat || g[5] == kRealignChannel;
      TORCH_CHECK(on_channels ? (s.channels == 2 * C && Wr == W) : (s.channels == C && Wr == 2 * W),
                  "xscan._C: the realigned map does not match the input maps");
      s.tokens = Hr * Wr;
      s.u_map = {C, Hr, W};
      s.y_map = {s.channels, Hr, Wr};
      break;
    }
    case kHeads:
      TORCH_CHECK(g.size() == 2 && K == 2 * g[0], "xscan._C: heads take 2P routes");
      s.tokens = g[1];
      s.u_map = s.y_map = {s.channels, g[0], g[1]};
      break;
    default: TORCH_CHECK(false, "xscan._C: unknown route kind ", kind);
  }
  const auto pixels = [&](const std::vector<int64_t>& map) {
    return std::vector<int64_t>{s.batch, map[0], map[1], map[2]};
  };
  expect_sizes(in.u, pixels(s.u_map), M, "u");
  expect_sizes(in.dt, {s.batch, K, s.channels, s.tokens}, M, "dt");
  for (const auto& B : in.B) expect_sizes(B, {s.batch, K, s.groups_B, s.dstate, s.tokens}, "B");
  for (const auto& C : in.C) expect_sizes(C, {s.batch, K, s.groups_C, s.dstate, s.tokens}, "C");
  if (in.z) expect_sizes(*in.z, pixels(s.u_map), "z");
  expect_sizes(in.A, {K, s.channels, s.dstate}, "A");
  if (in.D) expect_sizes(*in.D, {K, s.channels}, "D");
  if (in.bias) expect_sizes(*in.bias, {K, s.channels}, "delta_bias");
  return s;
}

// Output and gradient views: y, dy, du and ddt are per modality (realign: one map in both slots).
inline void check_maps(const ScanShape& s, const Tensors& maps, const std::vector<int64_t>& map, size_t M,
                       const char* name) {
  expect_sizes(maps, {s.batch, map[0], map[1], map[2]}, M, name);
}

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
