// Launch parameters shared by the CUDA scan kernels and the binding: plain C++, no CUDA or torch
// headers, so the binding (.cpp, torch only) and the kernels (.cu, CUDA only) can both include it.
//
// Every op is a set of independent scans ("sequences"), one per (batch b, route k, channel d). A
// sequence visits `length` route positions p; index maths (scan_kernel.cuh, locate()) turns p into
// the token it reads (modality m, token index) and the place its output goes. Nothing is copied into
// route order. All element offsets and strides are 64-bit.
#pragma once

#include <cstdint>

namespace xscan {
namespace cuda {

enum class ScanKind : int32_t {
  kSelectiveScan = 0,  // one route, position = time
  kSS2D = 1,           // four cross routes over an H x W map (SPEC section 2)
  kES2D = 2,           // four atrous routes over the stride-2 sub-lattices (SPEC section 4)
  kCrossSS2D = 3,      // four cross routes over 2L interleaved positions of two modalities (section 3)
  kInterleave = 4,     // SS2D over the realignment of two maps, read where they lie (section 5)
};

// A per-token tensor viewed as (Bt, K, channel-or-state, token): strides in elements. K-stride is 0
// for tensors without a route axis (u, z).
struct TokenTensor {
  const void* data[2] = {nullptr, nullptr};  // one per modality (cross_ss2d, interleave_ss2d)
  // stride_c: channel (u, delta, z) or group (B, C); stride_n: state (B, C only).
  int64_t stride_b = 0, stride_k = 0, stride_c = 0, stride_n = 0, stride_t = 0;
};

struct ScanParams {
  ScanKind kind = ScanKind::kSelectiveScan;
  int32_t batch = 0;     // Bt
  int32_t routes = 1;    // K
  int32_t channels = 0;  // Dm (Dr for interleave_ss2d)
  int32_t dstate = 0;    // N
  int32_t length = 0;    // route positions per sequence
  int32_t tokens = 0;    // tokens per modality of the per-token tensors (L, Lq, Lr)
  int32_t modalities = 1;
  // Map geometry: H, W of the scanned map (the realigned map for interleave_ss2d); for es2d the
  // unpadded H, W and the sub-lattice size Hq, Wq.
  int32_t height = 1, width = 1, sub_height = 1, sub_width = 1;
  // interleave_ss2d: xscan::RealignMode / RealignAxis (scan_math.h), and the channels and width of
  // each input map.
  int32_t realign_mode = 0, realign_axis = 0;
  int32_t u_channels = 0, u_width = 0;

  // Channel tiling: tiles never straddle a B or C group, so the in-block reduction of dB, dC is a
  // plain sum. group_tiles = lcm(G_B, G_C); each group holds tiles_per_group tiles.
  int32_t group_tiles = 1, tiles_per_group = 1, channels_per_tile = 1;
  int32_t groups_B = 1, groups_C = 1;
  int32_t lanes_per_channel = 1;  // power of two >= N (1 state per lane) or 32 (2 states per lane)

  bool delta_softplus = false;
  // delta's channel index is d / delta_channel_divisor (ssd_exchange: one dt per head of P channels).
  int32_t delta_channel_divisor = 1;

  // Inputs (per-token tensors in the dtype the kernel is instantiated for).
  TokenTensor u, delta, B, C, z;
  // Parameters, fp32, contiguous: A (K, Dm, N); D, delta_bias (K, Dm).
  const float* A = nullptr;
  const float* D = nullptr;
  const float* delta_bias = nullptr;

  // Forward outputs, fp32. y: per-modality outputs with (b, k, channel, spatial) strides (the
  // k-stride is non-zero when routes write separate partial outputs that the caller sums in a fixed
  // order, so no two routes ever write the same element). last_state: (Bt, Dm, N) or null.
  float* y[2] = {nullptr, nullptr};
  int64_t y_stride_b = 0, y_stride_k = 0, y_stride_c = 0, y_stride_t = 0;
  float* last_state = nullptr;
  // Chunk start states, (Bt, K, Dm, chunks, N) fp32: written by the forward when non-null, read by
  // the backward, which recomputes the states inside each chunk.
  float* chunk_states = nullptr;
  int32_t chunks = 0;

  // Backward. dout: per-modality output gradients, fp32, (b, channel, spatial) strides (no route
  // axis: every route reads the same gradient of the summed output). Gradient outputs, fp32: du at
  // y's place with y's strides (per-route partials for the summing ops); ddelta per modality with the
  // ddelta strides (per channel, even when delta_channel_divisor > 1: the caller sums); dz (only
  // selective_scan, shaped like delta) with the same strides; dB, dC per-tile partials
  // (Bt, K, tiles, N, modalities * tokens); dA_part (Bt, K, Dm, N); dD_part, ddelta_bias_part (Bt, K, Dm).
  const float* dout[2] = {nullptr, nullptr};
  const float* dlast_state = nullptr;  // (Bt, Dm, N) or null
  int64_t dout_stride_b = 0, dout_stride_c = 0, dout_stride_t = 0;
  float* du[2] = {nullptr, nullptr};
  float* ddelta[2] = {nullptr, nullptr};
  int64_t ddelta_stride_b = 0, ddelta_stride_k = 0, ddelta_stride_c = 0, ddelta_stride_t = 0;
  float* dz = nullptr;
  // Non-deterministic reductions (torch's deterministic mode off): route outputs y and du are added
  // with float atomics into one zeroed (b, channel, spatial) buffer (y's k-stride 0), and dB, dC
  // straight into zeroed (Bt, K, G, N, modalities * tokens) buffers, instead of the partials above.
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

}  // namespace cuda
}  // namespace xscan
