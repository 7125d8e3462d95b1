// The C entry points of the kernels: dispatch on the input dtype to the instantiations in
// scan_{forward,backward}_{fp32,fp16,bf16}.cu.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "scan_params.h"

namespace xscan {
namespace cuda {

template <typename T>
const char* scan_forward(const ScanParams& P, cudaStream_t stream);
template <typename T>
const char* scan_backward(const ScanParams& P, cudaStream_t stream);

extern template const char* scan_forward<float>(const ScanParams&, cudaStream_t);
extern template const char* scan_forward<__half>(const ScanParams&, cudaStream_t);
extern template const char* scan_forward<__nv_bfloat16>(const ScanParams&, cudaStream_t);
extern template const char* scan_backward<float>(const ScanParams&, cudaStream_t);
extern template const char* scan_backward<__half>(const ScanParams&, cudaStream_t);
extern template const char* scan_backward<__nv_bfloat16>(const ScanParams&, cudaStream_t);

const char* launch_scan_forward(const ScanParams& params, DType dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: return scan_forward<float>(params, s);
    case DType::kHalf: return scan_forward<__half>(params, s);
    case DType::kBFloat16: return scan_forward<__nv_bfloat16>(params, s);
  }
  return "xscan: unsupported dtype code";
}

const char* launch_scan_backward(const ScanParams& params, DType dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat: return scan_backward<float>(params, s);
    case DType::kHalf: return scan_backward<__half>(params, s);
    case DType::kBFloat16: return scan_backward<__nv_bfloat16>(params, s);
  }
  return "xscan: unsupported dtype code";
}

}  // namespace cuda
}  // namespace xscan
