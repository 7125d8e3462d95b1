// Host-side launchers of the scan kernels (scan_device.cuh), instantiated per input dtype in
// scan_{forward,backward}_{fp32,fp16,bf16}.cu, and the static switch from a launch's route and
// source to its route policy (shared with the host emulation of the kernels).
#pragma once

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
  return visit_route<int32_t>(static_cast<Route>(P.route), static_cast<Source>(P.source), P.geometry,
                              std::forward<F>(f));
}

#ifdef __CUDACC__
#include <cuda_runtime.h>

inline dim3 scan_grid(const ScanParams& P) {
  const GridSize g = scan_grid_size(P);
  return dim3(g.x, g.y, g.z);
}

inline const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

template <typename T>
const char* scan_forward(const ScanParams& P, cudaStream_t stream) {
  return with_routes(P, [&](const auto& routes) {
    using Routes = std::decay_t<decltype(routes)>;
    if (two_states_per_lane(P))
      scan_forward_kernel<T, 2, Routes><<<scan_grid(P), kThreadsPerBlock, 0, stream>>>(P, routes);
    else
      scan_forward_kernel<T, 1, Routes><<<scan_grid(P), kThreadsPerBlock, 0, stream>>>(P, routes);
    return last_error();
  });
}

template <typename T, int kStatesPerLane, typename Routes>
const char* launch_backward_with(const ScanParams& P, const Routes& routes, cudaStream_t stream) {
  scan_forward_kernel<T, kStatesPerLane, Routes><<<scan_grid(P), kThreadsPerBlock, 0, stream>>>(
      state_saving_pass(P), routes);
  const size_t bytes = backward_shared_bytes(P);
  auto kernel = scan_backward_kernel<T, kStatesPerLane, Routes>;
  if (bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(bytes));
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }
  kernel<<<scan_grid(P), kThreadsPerBlock, bytes, stream>>>(P, routes);
  return last_error();
}

template <typename T>
const char* scan_backward(const ScanParams& P, cudaStream_t stream) {
  return with_routes(P, [&](const auto& routes) {
    using Routes = std::decay_t<decltype(routes)>;
    return two_states_per_lane(P) ? launch_backward_with<T, 2, Routes>(P, routes, stream)
                                  : launch_backward_with<T, 1, Routes>(P, routes, stream);
  });
}
#endif  // __CUDACC__

}  // namespace cuda
}  // namespace xscan
