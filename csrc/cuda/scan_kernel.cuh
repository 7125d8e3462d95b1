// Host-side launchers of the scan kernels (scan_device.cuh), instantiated per input dtype in
// scan_{forward,backward}_{fp32,fp16,bf16}.cu.
#pragma once

#include <cuda_runtime.h>

#include "scan_device.cuh"

namespace xscan {
namespace cuda {

// Launch configuration shared by both passes.
inline dim3 scan_grid(const ScanParams& P) {
  return dim3(P.group_tiles * P.tiles_per_group, P.routes, P.batch);
}

template <typename T>
const char* scan_forward(const ScanParams& P, cudaStream_t stream) {
  if (two_states_per_lane(P)) {
    scan_forward_kernel<T, 2><<<scan_grid(P), kThreadsPerBlock, 0, stream>>>(P);
  } else {
    scan_forward_kernel<T, 1><<<scan_grid(P), kThreadsPerBlock, 0, stream>>>(P);
  }
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

template <typename T, int kStatesPerLane>
const char* launch_backward_with(const ScanParams& P, cudaStream_t stream) {
  const size_t bytes = backward_shared_bytes(P);
  auto kernel = scan_backward_kernel<T, kStatesPerLane>;
  if (bytes > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(bytes));
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }
  kernel<<<scan_grid(P), kThreadsPerBlock, bytes, stream>>>(P);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

template <typename T>
const char* scan_backward(const ScanParams& P, cudaStream_t stream) {
  const ScanParams saving = state_saving_pass(P);
  const char* err = nullptr;
  if (two_states_per_lane(P)) {
    scan_forward_kernel<T, 2><<<scan_grid(P), kThreadsPerBlock, 0, stream>>>(saving);
    err = launch_backward_with<T, 2>(P, stream);
  } else {
    scan_forward_kernel<T, 1><<<scan_grid(P), kThreadsPerBlock, 0, stream>>>(saving);
    err = launch_backward_with<T, 1>(P, stream);
  }
  return err;
}

}  // namespace cuda
}  // namespace xscan
