// Launch parameters shared by the CUDA scan kernels and the binding: plain C++, no CUDA or torch
// headers, so the binding (.cpp, torch only) and the kernels (.cu, CUDA only) can both include it.
//
// One launch executes a ScanSpec (xscan/spec.py): independent scans ("sequences"), one per (batch
// b, route k, channel d), each visiting `length` route positions p. The route policy of (route,
// source, geometry) (xscan/routes.h) turns p into the token it reads and the pixel its output goes
// to; every tensor is read and written through its own strides, so nothing is copied into route
// order. Element offsets and strides are 64-bit.
#pragma once

#include <cstdint>

namespace xscan {
namespace cuda {

// A pixel map per modality, (Bt, channels, rows, columns): u and z in the input dtype.
struct MapTensor {
  const void* data[2] = {nullptr, nullptr};
  int64_t stride_b = 0, stride_c = 0, stride_h = 0, stride_w = 0;
};

// A per-token tensor per modality in the input dtype: dt (Bt, K, Dm, T), or B and C (Bt, K, G, N, T).
struct TokenTensor {
  const void* data[2] = {nullptr, nullptr};
  int64_t stride_b = 0, stride_k = 0, stride_c = 0, stride_n = 0, stride_t = 0;
};

// An fp32 map per modality the kernels write (y, du) or read (dout): (b, channel, row, column),
// plus a route stride where each route writes its own partial (0 for one shared buffer).
struct OutputMap {
  float* data[2] = {nullptr, nullptr};
  int64_t stride_k = 0, stride_b = 0, stride_c = 0, stride_h = 0, stride_w = 0;
};

struct ScanParams {
  // The spec: xscan::Route and xscan::Source numbers, and the route kind's sizes.
  int32_t route = 0, source = 0;
  int64_t geometry[4] = {1, 1, 1, 1};
  int32_t batch = 0;     // Bt
  int32_t routes = 1;    // K
  int32_t channels = 0;  // Dm
  int32_t dstate = 0;    // N
  int32_t length = 0;    // route positions per sequence
  int32_t tokens = 0;    // tokens per modality of the per-token tensors
  int32_t modalities = 1;

  // Channel tiling: tiles never straddle a B or C group, so the in-block reduction of dB, dC is a
  // plain sum. group_tiles = lcm(G_B, G_C); each group holds tiles_per_group tiles.
  int32_t group_tiles = 1, tiles_per_group = 1, channels_per_tile = 1;
  int32_t groups_B = 1, groups_C = 1;
  int32_t lanes_per_channel = 1;  // a power of two, at most 32, holding 1 to 3 states each

  bool delta_softplus = false;

  // Inputs in the dtype the kernel is instantiated for; z on u's map (selective_scan only).
  MapTensor u, z;
  TokenTensor delta, B, C;
  // Parameters, fp32, contiguous: A (K, Dm, N); D, delta_bias (K, Dm).
  const float* A = nullptr;
  const float* D = nullptr;
  const float* delta_bias = nullptr;

  // Forward outputs, fp32: y per modality (route partials, or one buffer the routes add into with
  // float atomics when atomic_routes, or one written directly where routes never share a pixel);
  // last_state (Bt, K, Dm, N) or null.
  OutputMap y;
  float* last_state = nullptr;
  // Chunk start states, (Bt, K, Dm, chunks, N) fp32: written by the forward when non-null, read by
  // the backward, which recomputes the states inside each chunk.
  float* chunk_states = nullptr;
  int32_t chunks = 0;

  // Sequence split, for launches of too few blocks to fill the GPU: each sequence runs as
  // `segments` spans of `span_length` positions (a multiple of kChunkLength), one block each
  // (gridDim.z). A summary pass runs every span from a zero state and records its end state and
  // summed dt, a carry pass turns those into each span's start state, then the spans run for real
  // (scan_kernel.cuh). Buffers (seq = (b, k, d)): span_states (seq, segments, N) and span_dt (seq,
  // segments) fp32; the backward's adjoints entering each span from its successors likewise in
  // span_adjoints (seq, segments, N). With segments > 1, dA_part, dD_part, ddelta_bias_part hold a
  // partial per span: (Bt, K, Dm, segments, N) and (Bt, K, Dm, segments).
  int32_t segments = 1, span_length = 0;
  float* span_states = nullptr;
  float* span_dt = nullptr;
  float* span_adjoints = nullptr;
  bool span_summary = false;  // set by the launcher for the summary pass

  // Backward. dout: the outputs' gradients, fp32 (no route axis: every route reads the same).
  // du: u's gradient on u's maps, like y; ddelta (Bt, K, Dm, T) per modality, fp32 (strides of dt's
  // layout, every route its own); dz on z's map. dB, dC per-tile partials (Bt, K, tiles, N,
  // modalities * tokens), or with atomic_state_grads straight into zeroed (Bt, K, G, N, modalities
  // * tokens) buffers; dA_part (Bt, K, Dm, N); dD_part, ddelta_bias_part (Bt, K, Dm).
  OutputMap dout;
  const float* dlast_state = nullptr;  // (Bt, K, Dm, N) or null
  OutputMap du;
  float* ddelta[2] = {nullptr, nullptr};
  int64_t ddelta_stride_b = 0, ddelta_stride_k = 0, ddelta_stride_c = 0, ddelta_stride_t = 0;
  float* dz = nullptr;
  int64_t dz_stride_b = 0, dz_stride_c = 0, dz_stride_h = 0, dz_stride_w = 0;
  bool atomic_routes = false;
  bool atomic_state_grads = false;
  float* dB_part = nullptr;
  float* dC_part = nullptr;
  float* dA_part = nullptr;
  float* dD_part = nullptr;
  float* ddelta_bias_part = nullptr;
};

// Launchers, one per (pass, input dtype); `stream` is a cudaStream_t. dtype codes: 0 fp32, 1 fp16,
// 2 bf16. They return an error string (empty on success) instead of throwing across the C boundary.
enum class DType : int32_t { kFloat = 0, kHalf = 1, kBFloat16 = 2 };

const char* launch_scan_forward(const ScanParams& params, DType dtype, void* stream);
const char* launch_scan_backward(const ScanParams& params, DType dtype, void* stream);

// Sizing rules the binding needs before it allocates: chunk length of the saved states, and the
// largest d_state the kernels take.
constexpr int kChunkLength = 32;
constexpr int kMaxDState = 64;
constexpr int kThreadsPerBlock = 128;

// The N states of a channel over its lanes (xscan.backends.cuda.tiling picks the lanes): 1 to 3
// each, 1 or 2 in the backward (its shared memory grows with the states a block holds).
constexpr int kMaxStatesPerLane = 3, kMaxBackwardStatesPerLane = 2;
inline int states_per_lane(const ScanParams& P) { return (P.dstate + P.lanes_per_channel - 1) / P.lanes_per_channel; }

}  // namespace cuda
}  // namespace xscan
