// scan_forward for bf16 per-token inputs (fp32 accumulation): one instantiation per file keeps
// nvcc's per-file time and memory small.
#include "scan_kernel.cuh"

namespace xscan {
namespace cuda {

template const char* scan_forward<__nv_bfloat16>(const ScanParams&, cudaStream_t);

}  // namespace cuda
}  // namespace xscan
