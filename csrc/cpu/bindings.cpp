// Python bindings of the CPU scan kernels (xscan._C). xscan/backends/cpu.py builds the strided views
// (see scan_views.h for their layouts) and the zeroed fp32/fp64 output and gradient buffers.
#include <torch/extension.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <string>

#include "../cuda/scan_params.h"
#include "scan_dispatch.h"
#include "xscan/route_bindings.h"

namespace xscan {
namespace cpu {
void scan_forward(int64_t route, int64_t source, const std::vector<int64_t>& geometry, const ScanInputs& in,
                  const Tensors& y, const OptTensor& last_state, const OptTensor& checkpoints);
void scan_backward(int64_t route, int64_t source, const std::vector<int64_t>& geometry, const ScanInputs& in,
                   const Tensors& dy, const OptTensor& dlast, const Tensors& du, const Tensors& ddt, const Tensors& dB,
                   const Tensors& dC, const OptTensor& dz, const at::Tensor& dA, const OptTensor& dD,
                   const OptTensor& dbias, const OptTensor& checkpoints);
void complex_scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                          const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& bias,
                          bool softplus, at::Tensor y, at::Tensor last_state);
void complex_scan_backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                           const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& bias,
                           bool softplus, const at::Tensor& dy, const OptTensor& dlast, at::Tensor du,
                           at::Tensor ddelta, at::Tensor dA_part, at::Tensor dB, at::Tensor dC, at::Tensor dD_part,
                           at::Tensor dbias_part, OptTensor dz);
}  // namespace cpu
}  // namespace xscan

namespace {

using xscan::cpu::OptTensor;
using xscan::cpu::Tensors;

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

xscan::cpu::ScanInputs inputs(Tensors u, Tensors dt, Tensors B, Tensors C, OptTensor z, at::Tensor A, OptTensor D,
                              OptTensor bias, bool delta_softplus) {
  for (const auto* list : {&u, &dt, &B, &C})
    for (const auto& t : *list) TORCH_CHECK(t.device().is_cpu(), "xscan._C: CPU tensors only");
  return {std::move(u), std::move(dt), std::move(B),    std::move(C),  std::move(z),
          std::move(A), std::move(D),  std::move(bias), delta_softplus};
}

void scan_forward(int64_t route, int64_t source, std::vector<int64_t> geometry, Tensors u, Tensors dt, Tensors B,
                  Tensors C, OptTensor z, at::Tensor A, OptTensor D, OptTensor bias, bool delta_softplus, Tensors y,
                  OptTensor last_state, OptTensor checkpoints) {
  const auto in = inputs(std::move(u), std::move(dt), std::move(B), std::move(C), std::move(z), std::move(A),
                         std::move(D), std::move(bias), delta_softplus);
  xscan::cpu::scan_forward(route, source, geometry, in, y, last_state, checkpoints);
}

void scan_backward(int64_t route, int64_t source, std::vector<int64_t> geometry, Tensors u, Tensors dt, Tensors B,
                   Tensors C, OptTensor z, at::Tensor A, OptTensor D, OptTensor bias, bool delta_softplus, Tensors dy,
                   OptTensor dlast, Tensors du, Tensors ddt, Tensors dB, Tensors dC, OptTensor dz, at::Tensor dA,
                   OptTensor dD, OptTensor dbias, OptTensor checkpoints) {
  const auto in = inputs(std::move(u), std::move(dt), std::move(B), std::move(C), std::move(z), std::move(A),
                         std::move(D), std::move(bias), delta_softplus);
  xscan::cpu::scan_backward(route, source, geometry, in, dy, dlast, du, ddt, dB, dC, dz, dA, dD, dbias, checkpoints);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("max_threads", &max_threads, "OpenMP threads the CPU kernels use");
  m.def(
      "cuda_layout",
      [](int32_t batch, int32_t routes, int32_t channels, int32_t dstate, int32_t length, int32_t groups_B,
         int32_t groups_C, int64_t min_blocks, int64_t min_span, int max_warps) {
        xscan::cuda::ScanParams P;
        P.batch = batch, P.routes = routes, P.channels = channels, P.dstate = dstate, P.length = length;
        P.groups_B = groups_B, P.groups_C = groups_C;
        xscan::cuda::plan_launch(P, min_blocks, min_span, max_warps);
        pybind11::dict d;
        d["warps_per_channel"] = P.warps_per_channel;
        d["chunk_length"] = P.chunk_length;
        d["tiles"] = xscan::cuda::channel_tiles(P);
        d["channels_per_tile"] = xscan::cuda::channels_per_tile(P);
        d["chunks"] = P.chunks;
        d["segments"] = P.segments;
        d["span_length"] = P.span_length;
        d["forward_shared_bytes"] = xscan::cuda::shared_bytes(P, false);
        d["backward_shared_bytes"] = xscan::cuda::shared_bytes(P, true);
        return d;
      },
      "The CUDA kernels' launch layout (csrc/cuda/scan_params.h, plan_launch), for tools on machines without "
      "the CUDA extension.");
  xscan::export_routes(m);  // checked by xscan/backends/cpu.py when it loads
  m.attr("CHUNK") = xscan::cpu::kChunk;
  m.def("scan_forward", &scan_forward,
        "Forward of a scan: accumulates into the y views, writes last_state and, when given, the checkpoints: "
        "the state at every chunk start after the first, (Bt, K, chunks - 1, Dm, N) for chunks of CHUNK "
        "positions (route, source, geometry, u, dt, B, C, z, A, D, delta_bias, delta_softplus, y, last_state, "
        "checkpoints)");
  m.def("scan_backward", &scan_backward,
        "Backward of a scan: accumulates every gradient into its zeroed view (route, source, geometry, inputs "
        "as scan_forward, dy, dlast, du, ddt, dB, dC, dz, dA, dD, ddelta_bias, and the forward's checkpoints "
        "or None to recompute them)");
  m.def("complex_scan_forward", &xscan::cpu::complex_scan_forward,
        "selective_scan with complex A: writes y and last_state (u, delta, A, B, C, D, z, delta_bias, "
        "delta_softplus, y, last_state)");
  m.def("complex_scan_backward", &xscan::cpu::complex_scan_backward,
        "Backward of complex_scan_forward: writes every gradient buffer; dA, dD, ddelta_bias per batch");
}
