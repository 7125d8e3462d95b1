// Launch parameters shared by the CUDA scan kernels and the binding: plain C++, no CUDA or torch
// headers, so the binding (.cpp, torch only) and the kernels (.cu, CUDA only) can both include it.
//
// One launch executes a ScanSpec (xscan/spec.py): independent scans ("sequences"), one per (batch
// b, route k, channel d), each visiting `length` route positions p. The route policy of (route,
// source, geometry) (csrc/include/xscan/routes.h) turns p into the token it reads and the pixel its output goes
// to; every tensor is read and written through its own strides, so nothing is copied into route
// order. Element offsets and strides are 64-bit.
#pragma once

#include <cstddef>
#include <cstdint>

// Sizing helpers the kernels call too.
#ifdef __CUDACC__
#define XSCAN_PARAMS_HD __host__ __device__ inline
#else
#define XSCAN_PARAMS_HD inline
#endif

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

  // Layout (scan_device.cuh): each channel's sequence is scanned by warps_per_channel (W = 1, 2 or
  // 4) warps, chunk_length = W * 32 * kItems positions at a time (the forward: mostly twice that,
  // 2 kItems positions per lane; the chunk start states are saved per chunk_length); a block (tile)
  // holds 4 / W channels of one B and C group, so the in-block reduction of dB, dC is a plain sum.
  // group_tiles = lcm(G_B, G_C); each group holds tiles_per_group tiles. plan_launch() sets these.
  int32_t group_tiles = 1, tiles_per_group = 1;
  int32_t groups_B = 1, groups_C = 1;
  int32_t warps_per_channel = 1, chunk_length = 0;

  bool delta_softplus = false;
  // The layouts of B and C let the kernels load a lane's kItems positions that read consecutive
  // tokens (a route's token_step, routes.h) as aligned vectors (set by with_token_runs,
  // scan_kernel.cuh).
  bool token_runs = false;

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
  // the backward, which recomputes the states inside each chunk (chunks of chunk_length positions).
  // states_saved: a forward of the same layout has filled them (when autograd needs a backward), so
  // the backward does not rerun the forward to save them.
  float* chunk_states = nullptr;
  int32_t chunks = 0;
  bool states_saved = false;

  // Sequence split, for launches of too few blocks to fill the GPU: each sequence runs as
  // `segments` spans of `span_length` positions (whole chunks), one block each
  // (gridDim.z). A summary pass runs every span from a zero state and records its end state and
  // summed dt, a carry pass turns those into each span's start state, then the spans run for real
  // (scan_kernel.cuh); the backward's summary pass records each span's adjoint and summed dt likewise.
  // Buffers (seq = (b, k, d)): span_states (seq, segments, N) and span_dt (seq,
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

constexpr int kThreadsPerBlock = 128;
constexpr int kWarpSize = 32;
constexpr int kWarps = kThreadsPerBlock / kWarpSize;
constexpr int kItems = 8;  // consecutive positions per lane (the forward's: kForwardItems, scan_device.cuh)
constexpr int kMaxDState = 256;

XSCAN_PARAMS_HD int channels_per_tile(const ScanParams& P) { return kWarps / P.warps_per_channel; }
XSCAN_PARAMS_HD int channel_tiles(const ScanParams& P) { return P.group_tiles * P.tiles_per_group; }

// A row of the backward's dB, dC contributions: a chunk's positions, 4 floats of padding after
// every 32, so that the lanes' runs of kItems positions, written as 16-byte vectors, fall on
// distinct banks (as do 32 consecutive positions, read by a warp).
XSCAN_PARAMS_HD int partial_row(const ScanParams& P) { return P.chunk_length + P.chunk_length / 8; }
XSCAN_PARAMS_HD int partial_place(int position) { return position + ((position >> 5) << 2); }

// The backward's shared memory: per channel slot its adjoint carry and A; the warp totals of the
// block scans; per warp its dA sums; the dB, dC partials ([parity][B or C][slot][chunk position]);
// and the chunk's token columns (the positions' columns of dB and dC).
struct SharedLayout {
  int carry, A, totals, dA, partials, tokens, floats;
};

XSCAN_PARAMS_HD SharedLayout shared_layout(const ScanParams& P, bool backward) {
  SharedLayout s;
  s.carry = 0;
  s.A = s.carry + kWarps * P.dstate;
  s.totals = s.A + kWarps * P.dstate;
  s.dA = s.totals + 2 * kWarps * 2;
  s.partials = s.dA + (backward ? kWarps * P.dstate : 0);
  // (a block of one channel stores its terms of dB, dC directly: no partials)
  s.tokens = s.partials + (backward && channels_per_tile(P) > 1 ? 2 * 2 * channels_per_tile(P) * partial_row(P) : 0);
  s.floats = s.tokens + (backward ? P.chunk_length : 0);
  return s;
}

inline size_t shared_bytes(const ScanParams& P, bool backward) {
  return sizeof(float) * static_cast<size_t>(shared_layout(P, backward).floats);
}

inline int64_t lcm64(int64_t a, int64_t b) {
  int64_t x = a, y = b;
  while (y) {
    const int64_t r = x % y;
    x = y, y = r;
  }
  return a / x * b;
}

// The layout of a launch, from its sizes (batch, routes, channels, dstate, length, groups_B,
// groups_C): warps per channel, chunk length, tiling, and the sequence split. A launch should bring
// at least `min_blocks` blocks (the GPU's SMs times the blocks each holds): more warps per channel
// first (up to max_warps and what the length fills), then, for sequences of at least 2 * min_span
// positions, spans of whole chunks. A split's summary pass reruns every span, doubling the work, so
// spans are taken only where the launch brings at most half of min_blocks: where a split at least
// doubles the blocks in flight.
inline void plan_launch(ScanParams& P, int64_t min_blocks, int64_t min_span, int max_warps) {
  const int64_t group_tiles = lcm64(P.groups_B, P.groups_C);
  P.group_tiles = static_cast<int32_t>(group_tiles);
  const int64_t warp_chunk = static_cast<int64_t>(kWarpSize) * kItems;
  int widest = 1;
  while (widest < kWarps && widest < max_warps && widest * warp_chunk < P.length) widest *= 2;
  const auto blocks = [&](int W) {
    const int64_t per_tile = kWarps / W, per_group = P.channels / group_tiles;
    return static_cast<int64_t>(P.batch) * P.routes * group_tiles * ((per_group + per_tile - 1) / per_tile);
  };
  int W = 1;
  while (W < widest && blocks(W) < min_blocks) W *= 2;
  P.warps_per_channel = W;
  P.chunk_length = static_cast<int32_t>(W * warp_chunk);
  const int64_t per_group = P.channels / group_tiles, per_tile = kWarps / W;
  P.tiles_per_group = static_cast<int32_t>((per_group + per_tile - 1) / per_tile);
  P.chunks = static_cast<int32_t>((P.length + P.chunk_length - 1) / P.chunk_length);
  P.segments = 1, P.span_length = 0;
  const int64_t have = blocks(W), span_floor = min_span > P.chunk_length ? min_span : P.chunk_length;
  if (2 * have > min_blocks || P.length < 2 * span_floor || P.batch > 65535) return;
  int64_t segments = (min_blocks + have - 1) / have;
  if (segments > P.length / span_floor) segments = P.length / span_floor;
  if (segments > 65535) segments = 65535;
  int64_t span = (P.length + segments - 1) / segments;
  span = (span + P.chunk_length - 1) / P.chunk_length * P.chunk_length;
  segments = (P.length + span - 1) / span;
  if (segments > 1) P.segments = static_cast<int32_t>(segments), P.span_length = static_cast<int32_t>(span);
}

}  // namespace cuda
}  // namespace xscan
