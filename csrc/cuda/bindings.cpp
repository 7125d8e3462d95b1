// xscan._C_cuda: the Python face of the CUDA kernels. Deliberately thin: xscan/backends/cuda.py
// allocates every tensor and fills a ScanParams (pointers as integers, 64-bit strides); this file only
// moves those numbers into the struct and launches on the stream Python passes (as the integer
// torch.cuda.current_stream().cuda_stream), so it needs no ATen CUDA header.
#include <torch/extension.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "scan_params.h"

namespace py = pybind11;
using xscan::cuda::DType;
using xscan::cuda::ScanKind;
using xscan::cuda::ScanParams;
using xscan::cuda::TokenTensor;

namespace {

template <typename Ptr>
int64_t address(Ptr p) {
  return static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(p));
}

template <typename Ptr>
Ptr pointer(int64_t a) {
  return reinterpret_cast<Ptr>(static_cast<std::uintptr_t>(a));
}

void check(const char* error, const char* what) {
  if (error != nullptr && error[0] != '\0') throw std::runtime_error(std::string("xscan CUDA ") + what + ": " + error);
}

}  // namespace

// A pointer field exposed as an integer property.
#define XSCAN_POINTER(cls, field, type)                                                       \
  def_property(                                                                               \
      #field, [](const cls& s) { return address(s.field); },                                  \
      [](cls& s, int64_t a) { s.field = pointer<type>(a); })
// A two-modality pointer field: `name0`, `name1`.
#define XSCAN_POINTER_PAIR(cls, field, type)                                                  \
  def_property(                                                                               \
      #field "0", [](const cls& s) { return address(s.field[0]); },                           \
      [](cls& s, int64_t a) { s.field[0] = pointer<type>(a); })                               \
      .def_property(                                                                          \
          #field "1", [](const cls& s) { return address(s.field[1]); },                       \
          [](cls& s, int64_t a) { s.field[1] = pointer<type>(a); })

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xscan CUDA scan kernels (driven by xscan.backends.cuda)";
  m.attr("CHUNK_LENGTH") = xscan::cuda::kChunkLength;
  m.attr("MAX_DSTATE") = xscan::cuda::kMaxDState;
  m.attr("THREADS_PER_BLOCK") = xscan::cuda::kThreadsPerBlock;

  py::class_<TokenTensor>(m, "TokenTensor")
      .def(py::init<>())
      .XSCAN_POINTER_PAIR(TokenTensor, data, const void*)
      .def_readwrite("stride_b", &TokenTensor::stride_b)
      .def_readwrite("stride_k", &TokenTensor::stride_k)
      .def_readwrite("stride_c", &TokenTensor::stride_c)
      .def_readwrite("stride_n", &TokenTensor::stride_n)
      .def_readwrite("stride_t", &TokenTensor::stride_t);

  py::class_<ScanParams>(m, "ScanParams")
      .def(py::init<>())
      .def_property(
          "kind", [](const ScanParams& s) { return static_cast<int>(s.kind); },
          [](ScanParams& s, int k) { s.kind = static_cast<ScanKind>(k); })
      .def_readwrite("batch", &ScanParams::batch)
      .def_readwrite("routes", &ScanParams::routes)
      .def_readwrite("channels", &ScanParams::channels)
      .def_readwrite("dstate", &ScanParams::dstate)
      .def_readwrite("length", &ScanParams::length)
      .def_readwrite("tokens", &ScanParams::tokens)
      .def_readwrite("modalities", &ScanParams::modalities)
      .def_readwrite("height", &ScanParams::height)
      .def_readwrite("width", &ScanParams::width)
      .def_readwrite("sub_height", &ScanParams::sub_height)
      .def_readwrite("sub_width", &ScanParams::sub_width)
      .def_readwrite("realign_mode", &ScanParams::realign_mode)
      .def_readwrite("realign_axis", &ScanParams::realign_axis)
      .def_readwrite("u_channels", &ScanParams::u_channels)
      .def_readwrite("u_width", &ScanParams::u_width)
      .def_readwrite("group_tiles", &ScanParams::group_tiles)
      .def_readwrite("tiles_per_group", &ScanParams::tiles_per_group)
      .def_readwrite("channels_per_tile", &ScanParams::channels_per_tile)
      .def_readwrite("groups_B", &ScanParams::groups_B)
      .def_readwrite("groups_C", &ScanParams::groups_C)
      .def_readwrite("lanes_per_channel", &ScanParams::lanes_per_channel)
      .def_readwrite("delta_softplus", &ScanParams::delta_softplus)
      .def_readwrite("delta_channel_divisor", &ScanParams::delta_channel_divisor)
      .def_readwrite("u", &ScanParams::u)
      .def_readwrite("delta", &ScanParams::delta)
      .def_readwrite("B", &ScanParams::B)
      .def_readwrite("C", &ScanParams::C)
      .def_readwrite("z", &ScanParams::z)
      .XSCAN_POINTER(ScanParams, A, const float*)
      .XSCAN_POINTER(ScanParams, D, const float*)
      .XSCAN_POINTER(ScanParams, delta_bias, const float*)
      .XSCAN_POINTER_PAIR(ScanParams, y, float*)
      .def_readwrite("y_stride_b", &ScanParams::y_stride_b)
      .def_readwrite("y_stride_k", &ScanParams::y_stride_k)
      .def_readwrite("y_stride_c", &ScanParams::y_stride_c)
      .def_readwrite("y_stride_t", &ScanParams::y_stride_t)
      .XSCAN_POINTER(ScanParams, last_state, float*)
      .XSCAN_POINTER(ScanParams, chunk_states, float*)
      .def_readwrite("chunks", &ScanParams::chunks)
      .XSCAN_POINTER_PAIR(ScanParams, dout, const float*)
      .XSCAN_POINTER(ScanParams, dlast_state, const float*)
      .def_readwrite("dout_stride_b", &ScanParams::dout_stride_b)
      .def_readwrite("dout_stride_c", &ScanParams::dout_stride_c)
      .def_readwrite("dout_stride_t", &ScanParams::dout_stride_t)
      .XSCAN_POINTER_PAIR(ScanParams, du, float*)
      .XSCAN_POINTER_PAIR(ScanParams, ddelta, float*)
      .def_readwrite("ddelta_stride_b", &ScanParams::ddelta_stride_b)
      .def_readwrite("ddelta_stride_k", &ScanParams::ddelta_stride_k)
      .def_readwrite("ddelta_stride_c", &ScanParams::ddelta_stride_c)
      .def_readwrite("ddelta_stride_t", &ScanParams::ddelta_stride_t)
      .XSCAN_POINTER(ScanParams, dz, float*)
      .def_readwrite("atomic_routes", &ScanParams::atomic_routes)
      .def_readwrite("atomic_state_grads", &ScanParams::atomic_state_grads)
      .XSCAN_POINTER(ScanParams, dB_part, float*)
      .XSCAN_POINTER(ScanParams, dC_part, float*)
      .XSCAN_POINTER(ScanParams, dA_part, float*)
      .XSCAN_POINTER(ScanParams, dD_part, float*)
      .XSCAN_POINTER(ScanParams, ddelta_bias_part, float*);

  m.def(
      "forward",
      [](const ScanParams& params, int dtype, int64_t stream) {
        check(xscan::cuda::launch_scan_forward(params, static_cast<DType>(dtype), pointer<void*>(stream)),
              "forward");
      },
      "Launch the forward scan described by params on the given cudaStream_t (as an integer).");
  m.def(
      "backward",
      [](const ScanParams& params, int dtype, int64_t stream) {
        check(xscan::cuda::launch_scan_backward(params, static_cast<DType>(dtype), pointer<void*>(stream)),
              "backward");
      },
      "Rerun the forward saving chunk states, then launch the backward scan, on the given stream.");
}
