// xscan gpusim stub: C10_CUDA_CHECK / C10_CUDA_KERNEL_LAUNCH_CHECK print and abort.
#pragma once
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#define C10_CUDA_CHECK(EXPR)                                                                                    \
  do {                                                                                                          \
    const cudaError_t xscan_stub_err = (EXPR);                                                                  \
    if (xscan_stub_err != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(xscan_stub_err), __FILE__, __LINE__); \
      std::abort();                                                                                             \
    }                                                                                                           \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
