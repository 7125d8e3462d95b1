// From the binding's tensors to the engine: route policy and dtype dispatch, view setup.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/util/Optional.h>

#include <type_traits>
#include <utility>
#include <vector>

#include "scan_run.h"
#include "xscan/routes.h"

namespace xscan {
namespace cpu {

using OptTensor = c10::optional<at::Tensor>;
using Tensors = std::vector<at::Tensor>;

// Calls f(policy) with the route policy of (route, source, geometry) (csrc/include/xscan/routes.h), after checking
// the numbers: geometry is the route kind's sizes (xscan.spec.Route), then for a realigning source
// the input maps' C and W.
template <typename F>
void with_route(int64_t route, int64_t source, const std::vector<int64_t>& g, F&& f) {
  TORCH_CHECK(route >= 0 && route < kRouteKinds, "xscan._C: unknown route kind ", route);
  TORCH_CHECK(source >= 0 && source < kSources, "xscan._C: unknown source ", source);
  const auto r = static_cast<Route>(route);
  const auto s = static_cast<Source>(source);
  TORCH_CHECK(static_cast<int>(g.size()) == geometry_sizes(r, s), "xscan._C: route ", route, " with source ", source,
              " takes ", geometry_sizes(r, s), " sizes");
  for (const int64_t size : g) TORCH_CHECK(size > 0, "xscan._C: route sizes must be positive");
  visit_route(r, s, g.data(), std::forward<F>(f));
}

// The inputs every scan takes (see ScanViews for the layouts).
struct ScanInputs {
  Tensors u, dt, B, C;
  OptTensor z;
  at::Tensor A;
  OptTensor D, bias;
  bool delta_softplus;
};

// The sizes of one call's views, from the route kind and geometry (see with_route) and the inputs.
// Every view is checked against them before any kernel runs, so that no index the engine computes
// leaves a buffer: the Python glue builds consistent views, this guards the extension's own entry.
struct ScanShape {
  int64_t batch, routes, channels, dstate, groups_B, groups_C, tokens, length;  // length: positions per route
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

inline ScanShape check_inputs(int64_t route, int64_t source, const std::vector<int64_t>& g, const ScanInputs& in) {
  TORCH_CHECK(!in.u.empty() && in.u.size() <= 2 && in.dt.size() == in.u.size() && in.B.size() == in.u.size() &&
                  in.C.size() == in.u.size(),
              "xscan._C: one or two modalities of u, dt, B, C");
  TORCH_CHECK(in.dt[0].dim() == 4 && in.A.dim() == 3 && in.B[0].dim() == 5 && in.C[0].dim() == 5,
              "xscan._C: dt must be (Bt, K, Dm, E), A (K, Dm, N), B and C (Bt, K, G, N, E)");
  ScanShape s{in.dt[0].size(0),
              in.dt[0].size(1),
              in.dt[0].size(2),
              in.A.size(2),
              in.B[0].size(2),
              in.C[0].size(2),
              0,
              0,
              {},
              {}};
  TORCH_CHECK(s.groups_B > 0 && s.groups_C > 0 && s.channels % s.groups_B == 0 && s.channels % s.groups_C == 0,
              "xscan._C: B and C groups must divide the channels");
  with_route(route, source, g, [&](const auto& policy) {
    TORCH_CHECK(static_cast<int>(in.u.size()) == policy.modalities(), "xscan._C: route kind ", route, " takes ",
                policy.modalities(), " modalities of u, dt, B, C");
    TORCH_CHECK(s.routes == policy.routes(), "xscan._C: route kind ", route, " has ", policy.routes(), " routes, dt ",
                s.routes);
    if constexpr (!std::decay_t<decltype(policy)>::kSameChannel)
      TORCH_CHECK(policy.fits(s.channels), "xscan._C: the realigned map does not match the input maps");
    s.tokens = policy.tokens();
    s.length = policy.length();
    const Extent u = policy.u_map(s.channels), y = policy.y_map(s.channels);
    s.u_map = {u.channels, u.rows, u.cols};
    s.y_map = {y.channels, y.rows, y.cols};
  });
  const size_t M = in.u.size();
  const int64_t K = s.routes;
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

// The forward's checkpoints (see ScanViews): (Bt, K, chunks - 1, Dm, N) in the accumulation dtype.
inline void check_checkpoints(const ScanShape& s, const OptTensor& checkpoints, at::ScalarType token_type) {
  if (!checkpoints) return;
  const int64_t chunks = (s.length + kChunk - 1) / kChunk;
  expect_sizes(*checkpoints, {s.batch, s.routes, chunks - 1, s.channels, s.dstate}, "checkpoints");
  const auto acc = token_type == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(checkpoints->scalar_type() == acc, "xscan._C: checkpoints must be ", acc);
}

// Output and gradient views: y, dy, du and ddt are per modality (realign: one map in both slots).
inline void check_maps(const ScanShape& s, const Tensors& maps, const std::vector<int64_t>& map, size_t M,
                       const char* name) {
  expect_sizes(maps, {s.batch, map[0], map[1], map[2]}, M, name);
}

template <typename scalar_t, typename acc_t>
ScanViews<scalar_t, acc_t> input_views(const ScanInputs& in) {  // after check_inputs: the shapes are right
  const auto acc = c10::CppTypeToScalarType<acc_t>::value;
  TORCH_CHECK(in.A.scalar_type() == acc, "xscan._C: A must be ", acc);
  for (const OptTensor* p : {&in.D, &in.bias})
    TORCH_CHECK(!p->has_value() || (*p)->scalar_type() == acc, "xscan._C: D and delta_bias must be ", acc);
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
