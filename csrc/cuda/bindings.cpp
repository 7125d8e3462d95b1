// xscan._C_cuda: the Python face of the CUDA kernels. Deliberately thin: xscan/backends/cuda.py
// allocates every tensor and fills a ScanParams from an op's ScanSpec (pointers as integers, 64-bit
// strides); this file only moves those numbers into the struct and launches on the stream Python
// passes (as the integer torch.cuda.current_stream().cuda_stream), so it needs no ATen CUDA header.
#include <torch/extension.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "scan_params.h"
#include "xscan/route_bindings.h"

namespace py = pybind11;
using xscan::cuda::DType;
using xscan::cuda::MapTensor;
using xscan::cuda::OutputMap;
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

void check_spec(const ScanParams& P) {
  if (P.route < 0 || P.route >= xscan::kRouteKinds || P.source < 0 || P.source >= xscan::kSources ||
      (P.source != 0 && P.route != static_cast<int32_t>(xscan::Route::kCross)))
    throw std::invalid_argument("xscan CUDA: unknown route or source");
  for (int i = 0; i < xscan::geometry_sizes(static_cast<xscan::Route>(P.route), static_cast<xscan::Source>(P.source));
       ++i)
    if (P.geometry[i] < 1) throw std::invalid_argument("xscan CUDA: route sizes must be positive");
  const int W = P.warps_per_channel;
  if (P.dstate < 1 || P.dstate > xscan::cuda::kMaxDState || P.batch < 1 || P.routes < 1 || P.channels < 1 ||
      (W != 1 && W != 2 && W != 4) || P.chunk_length != W * xscan::cuda::kWarpSize * xscan::cuda::kItems ||
      P.chunks != (P.length + P.chunk_length - 1) / P.chunk_length || P.group_tiles < 1 || P.tiles_per_group < 1)
    throw std::invalid_argument("xscan CUDA: sizes outside the kernels' range (plan the launch with plan())");
  if (P.segments < 1 || P.segments > 65535 ||
      (P.segments > 1 && (P.span_length < 1 || P.span_length % P.chunk_length != 0 ||
                          static_cast<int64_t>(P.span_length) * (P.segments - 1) >= P.length ||
                          static_cast<int64_t>(P.span_length) * P.segments < P.length || !P.span_states || !P.span_dt ||
                          P.batch > 65535)))
    throw std::invalid_argument("xscan CUDA: a sequence split must cover the length with whole chunks per span");
}

}  // namespace

// A pointer field exposed as an integer property.
#define XSCAN_POINTER(cls, field, type) \
  def_property(                         \
      #field, [](const cls& s) { return address(s.field); }, [](cls& s, int64_t a) { s.field = pointer<type>(a); })
// A two-modality pointer field: `name0`, `name1`.
#define XSCAN_POINTER_PAIR(cls, field, type)                            \
  def_property(                                                         \
      #field "0", [](const cls& s) { return address(s.field[0]); },     \
      [](cls& s, int64_t a) { s.field[0] = pointer<type>(a); })         \
      .def_property(                                                    \
          #field "1", [](const cls& s) { return address(s.field[1]); }, \
          [](cls& s, int64_t a) { s.field[1] = pointer<type>(a); })

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "xscan CUDA scan kernels (driven by xscan.backends.cuda)";
  m.attr("MAX_DSTATE") = xscan::cuda::kMaxDState;
  m.attr("ITEMS_PER_LANE") = xscan::cuda::kItems;
  m.attr("WARPS_PER_BLOCK") = xscan::cuda::kWarps;
  m.attr("THREADS_PER_BLOCK") = xscan::cuda::kThreadsPerBlock;
  xscan::export_routes(m);  // checked by xscan/backends/cuda.py when it loads

  py::class_<MapTensor>(m, "MapTensor")
      .def(py::init<>())
      .XSCAN_POINTER_PAIR(MapTensor, data, const void*)
      .def_readwrite("stride_b", &MapTensor::stride_b)
      .def_readwrite("stride_c", &MapTensor::stride_c)
      .def_readwrite("stride_h", &MapTensor::stride_h)
      .def_readwrite("stride_w", &MapTensor::stride_w);

  py::class_<TokenTensor>(m, "TokenTensor")
      .def(py::init<>())
      .XSCAN_POINTER_PAIR(TokenTensor, data, const void*)
      .def_readwrite("stride_b", &TokenTensor::stride_b)
      .def_readwrite("stride_k", &TokenTensor::stride_k)
      .def_readwrite("stride_c", &TokenTensor::stride_c)
      .def_readwrite("stride_n", &TokenTensor::stride_n)
      .def_readwrite("stride_t", &TokenTensor::stride_t);

  py::class_<OutputMap>(m, "OutputMap")
      .def(py::init<>())
      .XSCAN_POINTER_PAIR(OutputMap, data, float*)
      .def_readwrite("stride_k", &OutputMap::stride_k)
      .def_readwrite("stride_b", &OutputMap::stride_b)
      .def_readwrite("stride_c", &OutputMap::stride_c)
      .def_readwrite("stride_h", &OutputMap::stride_h)
      .def_readwrite("stride_w", &OutputMap::stride_w);

  py::class_<ScanParams>(m, "ScanParams")
      .def(py::init<>())
      .def_readwrite("route", &ScanParams::route)
      .def_readwrite("source", &ScanParams::source)
      .def_property(
          "geometry", [](const ScanParams& s) { return std::vector<int64_t>(s.geometry, s.geometry + 4); },
          [](ScanParams& s, const std::vector<int64_t>& g) {
            if (g.empty() || g.size() > 4) throw std::invalid_argument("xscan CUDA: 1 to 4 geometry sizes");
            for (size_t i = 0; i < 4; ++i) s.geometry[i] = i < g.size() ? g[i] : 1;
          })
      .def_readwrite("batch", &ScanParams::batch)
      .def_readwrite("routes", &ScanParams::routes)
      .def_readwrite("channels", &ScanParams::channels)
      .def_readwrite("dstate", &ScanParams::dstate)
      .def_readwrite("length", &ScanParams::length)
      .def_readwrite("tokens", &ScanParams::tokens)
      .def_readwrite("modalities", &ScanParams::modalities)
      .def_readwrite("group_tiles", &ScanParams::group_tiles)
      .def_readwrite("tiles_per_group", &ScanParams::tiles_per_group)
      .def_readwrite("groups_B", &ScanParams::groups_B)
      .def_readwrite("groups_C", &ScanParams::groups_C)
      .def_readwrite("warps_per_channel", &ScanParams::warps_per_channel)
      .def_readwrite("chunk_length", &ScanParams::chunk_length)
      .def_readwrite("delta_softplus", &ScanParams::delta_softplus)
      .def_readwrite("u", &ScanParams::u)
      .def_readwrite("z", &ScanParams::z)
      .def_readwrite("delta", &ScanParams::delta)
      .def_readwrite("B", &ScanParams::B)
      .def_readwrite("C", &ScanParams::C)
      .XSCAN_POINTER(ScanParams, A, const float*)
      .XSCAN_POINTER(ScanParams, D, const float*)
      .XSCAN_POINTER(ScanParams, delta_bias, const float*)
      .def_readwrite("y", &ScanParams::y)
      .XSCAN_POINTER(ScanParams, last_state, float*)
      .XSCAN_POINTER(ScanParams, chunk_states, float*)
      .def_readwrite("chunks", &ScanParams::chunks)
      .def_readwrite("states_saved", &ScanParams::states_saved)
      .def_readwrite("segments", &ScanParams::segments)
      .def_readwrite("span_length", &ScanParams::span_length)
      .XSCAN_POINTER(ScanParams, span_states, float*)
      .XSCAN_POINTER(ScanParams, span_dt, float*)
      .XSCAN_POINTER(ScanParams, span_adjoints, float*)
      .def_readwrite("dout", &ScanParams::dout)
      .XSCAN_POINTER(ScanParams, dlast_state, const float*)
      .def_readwrite("du", &ScanParams::du)
      .XSCAN_POINTER_PAIR(ScanParams, ddelta, float*)
      .def_readwrite("ddelta_stride_b", &ScanParams::ddelta_stride_b)
      .def_readwrite("ddelta_stride_k", &ScanParams::ddelta_stride_k)
      .def_readwrite("ddelta_stride_c", &ScanParams::ddelta_stride_c)
      .def_readwrite("ddelta_stride_t", &ScanParams::ddelta_stride_t)
      .XSCAN_POINTER(ScanParams, dz, float*)
      .def_readwrite("dz_stride_b", &ScanParams::dz_stride_b)
      .def_readwrite("dz_stride_c", &ScanParams::dz_stride_c)
      .def_readwrite("dz_stride_h", &ScanParams::dz_stride_h)
      .def_readwrite("dz_stride_w", &ScanParams::dz_stride_w)
      .def_readwrite("atomic_routes", &ScanParams::atomic_routes)
      .def_readwrite("atomic_state_grads", &ScanParams::atomic_state_grads)
      .XSCAN_POINTER(ScanParams, dB_part, float*)
      .XSCAN_POINTER(ScanParams, dC_part, float*)
      .XSCAN_POINTER(ScanParams, dA_part, float*)
      .XSCAN_POINTER(ScanParams, dD_part, float*)
      .XSCAN_POINTER(ScanParams, ddelta_bias_part, float*);

  m.def(
      "plan",
      [](ScanParams& params, int64_t min_blocks, int64_t min_span, int max_warps) {
        xscan::cuda::plan_launch(params, min_blocks, min_span, max_warps);
      },
      "Set the launch layout (warps per channel, chunk length, tiling, sequence split) from its sizes.");
  m.def(
      "shared_bytes",
      [](const ScanParams& params, bool backward) { return xscan::cuda::shared_bytes(params, backward); },
      "Dynamic shared memory per block of the forward or backward scan kernel.");
  m.def(
      "forward",
      [](const ScanParams& params, int dtype, int64_t stream) {
        check_spec(params);
        check(xscan::cuda::launch_scan_forward(params, static_cast<DType>(dtype), pointer<void*>(stream)), "forward");
      },
      "Launch the forward scan described by params on the given cudaStream_t (as an integer).");
  m.def(
      "backward",
      [](const ScanParams& params, int dtype, int64_t stream) {
        check_spec(params);
        if (params.segments > 1 && !params.span_adjoints)
          throw std::invalid_argument("xscan CUDA: a split backward needs span_adjoints");
        if (!params.chunk_states) throw std::invalid_argument("xscan CUDA: the backward needs chunk_states");
        check(xscan::cuda::launch_scan_backward(params, static_cast<DType>(dtype), pointer<void*>(stream)), "backward");
      },
      "Launch the backward scan (after a rerun of the forward saving chunk states, unless params.states_saved) "
      "on the given stream.");
}
