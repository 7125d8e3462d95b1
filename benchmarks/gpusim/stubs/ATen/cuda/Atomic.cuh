// xscan gpusim stub: gpuAtomicAdd for float (the real-weight fp32 instantiations only).
#pragma once
#include <cuda_runtime.h>
__device__ __forceinline__ float gpuAtomicAdd(float* address, float val) { return atomicAdd(address, val); }
