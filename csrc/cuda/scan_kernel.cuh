// Host-side launchers of the scan kernels (scan_device.cuh), instantiated per input dtype in
// scan_{forward,backward}_{fp32,fp16,bf16}.cu, and the static switch from a launch's route and
// source to its route policy (shared with the host emulation of the kernels).
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "scan_device.cuh"

namespace xscan {
namespace cuda {

// Calls f(policy) with the route policy of P's route, source and geometry (the binding has checked
// the numbers), 32-bit indices: every kernel is instantiated per route policy (a static switch), so
// a position's route location is that policy's index maths, inlined, and nothing else.
template <typename F>
auto with_routes(const ScanParams& P, F&& f) {
  return visit_route<int32_t, FastDivisor>(static_cast<Route>(P.route), static_cast<Source>(P.source), P.geometry,
                                           std::forward<F>(f));
}

// The launches of one forward and of one backward, for any `launch(kernel, grid, shared bytes,
// arguments...)` that runs a kernel and returns false when it fails (a CUDA launch below, or the host
// emulation's). A split sequence (P.segments > 1) adds a summary and a carry pass before each scan.
// The backward first reruns the forward to save the chunk start states, unless P.states_saved.
template <typename T, typename Routes, typename Launch>
bool forward_passes(const ScanParams& P, const Routes& routes, Launch&& launch) {
  constexpr int kMost = kForwardItems<Routes>;
  const auto forward = forward_items<Routes>(P) == kMost ? scan_forward_kernel<T, Routes, kMost>
                                                         : scan_forward_kernel<T, Routes, kItems>;
  const GridSize grid = scan_grid_size(P);
  const size_t shared = shared_bytes(P, false);
  if (P.segments == 1) return launch(forward, grid, shared, P, routes);
  return launch(forward, grid, shared, span_summary_pass(P), routes) &&
         launch(span_carry_kernel<false>, span_carry_grid(P), 0, P) && launch(forward, grid, shared, P, routes);
}

template <typename T, typename Routes, typename Launch>
bool backward_passes(const ScanParams& P, const Routes& routes, Launch&& launch) {
  const GridSize grid = scan_grid_size(P);
  return (P.states_saved || forward_passes<T>(state_saving_pass(P), routes, launch)) &&
         (P.segments == 1 || (launch(span_adjoint_kernel<T, Routes>, grid, shared_bytes(P, false), P, routes) &&
                              launch(span_carry_kernel<true>, span_carry_grid(P), 0, P))) &&
         launch(scan_backward_kernel<T, Routes>, grid, shared_bytes(P, true), P, routes);
}

// P with token_runs set where the kernels can read each lane's kItems positions' B and C as runs of
// tokens in aligned vectors (one per modality where the positions alternate them): the route
// policy has routes whose positions read consecutive tokens (kTokenRuns; the kernels ask token_step
// per route), the length (kPositionsPerToken times the token count in such policies) is whole runs
// (so a lane's run is all inside the sequence or all past its end, and a run read backwards starts
// on a run's boundary too), and B's and C's rows are unit-stride along tokens and start on 16-byte
// boundaries.
template <typename T, typename Routes>
ScanParams with_token_runs(const ScanParams& P, const Routes&) {
  constexpr int64_t kPerVector = 16 / sizeof(T);
  const auto aligned = [&](const TokenTensor& t) {
    bool ok = t.stride_t == 1 && t.stride_b % kPerVector == 0 && t.stride_k % kPerVector == 0 &&
              t.stride_c % kPerVector == 0 && t.stride_n % kPerVector == 0;
    for (int m = 0; m < 2; ++m) ok = ok && reinterpret_cast<uintptr_t>(t.data[m]) % 16 == 0;
    return ok;
  };
  ScanParams runs = P;
  runs.token_runs = Routes::kTokenRuns && P.length % kItems == 0 &&
                    int64_t{P.tokens} * Routes::kPositionsPerToken == P.length && aligned(P.B) && aligned(P.C);
  return runs;
}

// One forward / one backward of P with input type T, every kernel run by `launch` (forward_passes):
// the entry points of the CUDA launchers below and of the host emulation.
template <typename T, typename Launch>
bool run_forward(const ScanParams& P, Launch&& launch) {
  return with_routes(
      P, [&](const auto& routes) { return forward_passes<T>(with_token_runs<T>(P, routes), routes, launch); });
}

template <typename T, typename Launch>
bool run_backward(const ScanParams& P, Launch&& launch) {
  return with_routes(
      P, [&](const auto& routes) { return backward_passes<T>(with_token_runs<T>(P, routes), routes, launch); });
}

#ifdef __CUDACC__
#include <cuda_runtime.h>

// Runs a kernel on a stream (forward_passes' `launch`); keeps the first error.
struct StreamLaunch {
  cudaStream_t stream;
  const char* error = "";

  template <typename... Params, typename... Args>
  bool operator()(void (*kernel)(Params...), GridSize grid, size_t shared_bytes, const Args&... args) {
    if (shared_bytes > 48 * 1024) {
      const cudaError_t err =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes));
      if (err != cudaSuccess) return fail(err);
    }
    kernel<<<dim3(grid.x, grid.y, grid.z), kThreadsPerBlock, shared_bytes, stream>>>(args...);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess || fail(err);
  }

  bool fail(cudaError_t err) {
    error = cudaGetErrorString(err);
    return false;
  }
};

template <typename T>
const char* scan_forward(const ScanParams& P, cudaStream_t stream) {
  StreamLaunch launch{stream};
  run_forward<T>(P, launch);
  return launch.error;
}

template <typename T>
const char* scan_backward(const ScanParams& P, cudaStream_t stream) {
  StreamLaunch launch{stream};
  run_backward<T>(P, launch);
  return launch.error;
}
#endif  // __CUDACC__

}  // namespace cuda
}  // namespace xscan
