// mamba-ssm's selective-scan kernels (fp32 input, real weights), compiled from its source
// distribution (run.py downloads and extracts it into the cache; nothing of it is in this repository)
// against the stub c10/ATen headers in stubs/. Its own translation unit, so that the harness
// recompiles without it.
#include <algorithm>
#include <cstdint>
#include <initializer_list>

// the order mamba's own launchers include them in
#include "selective_scan_fwd_kernel.cuh"

#include "selective_scan_bwd_kernel.cuh"

template void selective_scan_fwd_cuda<float, float>(SSMParamsBase& params, cudaStream_t stream);
template void selective_scan_bwd_cuda<float, float>(SSMParamsBwd& params, cudaStream_t stream);
