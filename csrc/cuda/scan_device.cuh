// The scan kernels, templated on the per-token input type (float, __half, __nv_bfloat16), the number
// of states each lane holds and the route policy (xscan/routes.h, the CPU engine's own). Plain CUDA:
// no torch headers (the CPU torch wheel has none).
//
// Work split: a block owns one (batch b, route k, tile of channels); each channel is scanned by a
// group of `lanes_per_channel` lanes of one warp, each lane holding `kStatesPerLane` of the N states;
// C.h is summed over the group with warp shuffles. Time runs sequentially inside the block. All
// accumulation is fp32; outputs and gradients are fp32 (the caller casts them).
//
// Backward: the forward is rerun with the state saved at the start of every kChunkLength positions;
// the backward walks the chunks in reverse, recomputes the states of one chunk into registers and runs
// the adjoint recurrence through it. dB and dC (shared by the channels of a group) are summed over the
// block's channels in shared memory in a fixed order, then written as per-tile partials that the
// caller sums (deterministic), or added into one buffer with float atomics (atomic_state_grads).
//
// Under nvcc this is plain CUDA. Without nvcc (the host emulation in tests/backends/cuda_emulator/)
// the includer first defines threadIdx, blockIdx, __shfl_xor_sync, __syncthreads, atomicAdd,
// dynamic_shared(), __half and __nv_bfloat16 with their conversions to float, and runs each kernel
// once per emulated thread.
#pragma once

#include "scan_params.h"
#include "xscan/routes.h"
#include "xscan/scan_math.h"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define XSCAN_DEVICE __device__ __forceinline__
#define XSCAN_KERNEL __global__ void __launch_bounds__(kThreadsPerBlock)
#else
#define XSCAN_DEVICE inline
#define XSCAN_KERNEL void
#endif

namespace xscan {
namespace cuda {

XSCAN_DEVICE float to_float(float x) { return x; }
XSCAN_DEVICE float to_float(__half x) { return __half2float(x); }
XSCAN_DEVICE float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

#ifdef __CUDACC__
// The backward's dynamic shared memory.
XSCAN_DEVICE float* dynamic_shared() {
  extern __shared__ float shared[];
  return shared;
}
#endif

template <typename T>
XSCAN_DEVICE float load_map(const MapTensor& t, int m, int b, int64_t c, int64_t r, int64_t w) {
  const T* base = static_cast<const T*>(t.data[m]);
  return to_float(base[b * t.stride_b + c * t.stride_c + r * t.stride_h + w * t.stride_w]);
}

template <typename T>
XSCAN_DEVICE float load_token(const TokenTensor& t, int m, int b, int k, int64_t c, int64_t tok) {
  const T* base = static_cast<const T*>(t.data[m]);
  return to_float(base[b * t.stride_b + k * t.stride_k + c * t.stride_c + tok * t.stride_t]);
}

template <typename T>
XSCAN_DEVICE float load_state(const TokenTensor& t, int m, int b, int k, int group, int n, int64_t tok) {
  const T* base = static_cast<const T*>(t.data[m]);
  return to_float(base[b * t.stride_b + k * t.stride_k + group * t.stride_c + n * t.stride_n + tok * t.stride_t]);
}

// The element of an output map (y, du, dout) at a pixel of route k.
XSCAN_DEVICE int64_t map_offset(const OutputMap& o, int b, int k, int64_t c, int64_t r, int64_t w) {
  return k * o.stride_k + b * o.stride_b + c * o.stride_c + r * o.stride_h + w * o.stride_w;
}

// A write of one route's output (or input gradient): plain, or added into a zeroed sum over routes.
XSCAN_DEVICE void store(bool atomic, float* at, float value) {
  if (atomic) {
    atomicAdd(at, value);
  } else {
    *at = value;
  }
}

// Sum over the `width` lanes (a power of two) of a channel's group; every lane gets the sum.
XSCAN_DEVICE float group_sum(float x, int width) {
  for (int offset = width >> 1; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset, width);
  return x;
}

// The thread's place in the launch: its channel, lane in the channel's group, groups of B and C.
struct Lane {
  int b, k, tile, local_channel, lane, d, group_B, group_C;
  int tile_group_B, tile_group_C;  // the B and C groups of the whole tile (a tile never straddles one)
  bool active;  // false for lanes past the tile's last channel: they compute on channel 0 and write nothing
};

XSCAN_DEVICE Lane lane_of(const ScanParams& P) {
  Lane l;
  l.tile = blockIdx.x;
  l.k = blockIdx.y;
  l.b = blockIdx.z;
  l.local_channel = threadIdx.x / P.lanes_per_channel;
  l.lane = threadIdx.x % P.lanes_per_channel;
  const int group_tile = l.tile / P.tiles_per_group;
  const int in_group = (l.tile % P.tiles_per_group) * P.channels_per_tile + l.local_channel;
  const int channels_per_group_tile = P.channels / P.group_tiles;
  l.active = l.local_channel < P.channels_per_tile && in_group < channels_per_group_tile;
  l.d = l.active ? group_tile * channels_per_group_tile + in_group : 0;
  l.tile_group_B = group_tile / (P.group_tiles / P.groups_B);
  l.tile_group_C = group_tile / (P.group_tiles / P.groups_C);
  l.group_B = l.d / (P.channels / P.groups_B);
  l.group_C = l.d / (P.channels / P.groups_C);
  return l;
}

// Positions whose token data the forward loads ahead of the recurrence.
constexpr int kStage = 8;
static_assert(kChunkLength % kStage == 0, "chunk starts must fall on a stage's first position");

// One position of a sequence: where it reads and writes (the route policy's token for this lane's
// channel, in 32-bit coordinates: the launcher keeps every size below 2^31) and its inputs.
struct TokenStep {
  int m;                         // modality
  bool pad;                      // u reads 0, no output
  int32_t e, uc, ur, uw, yc, yr, yw;
  float delta_raw;  // delta + delta_bias, before softplus
  float dt;         // the step size used
  float u;
};

template <typename T, typename Routes>
XSCAN_DEVICE TokenStep load_step(const ScanParams& P, const Routes& routes, const Lane& l, float bias, int64_t p) {
  Token t = routes.at(l.k, p);
  routes.source(l.d, t);
  TokenStep s;
  s.m = t.m, s.pad = t.pad;
  s.e = static_cast<int32_t>(t.e), s.uc = static_cast<int32_t>(t.uc), s.ur = static_cast<int32_t>(t.ur);
  s.uw = static_cast<int32_t>(t.uw), s.yc = static_cast<int32_t>(t.yc), s.yr = static_cast<int32_t>(t.yr);
  s.yw = static_cast<int32_t>(t.yw);
  s.delta_raw = load_token<T>(P.delta, s.m, l.b, l.k, l.d, s.e) + bias;
  s.dt = P.delta_softplus ? softplus(s.delta_raw) : s.delta_raw;
  s.u = s.pad ? 0.f : load_map<T>(P.u, s.m, l.b, s.uc, s.ur, s.uw);
  return s;
}

template <typename T, int kStatesPerLane, typename Routes>
XSCAN_KERNEL scan_forward_kernel(const ScanParams P, const Routes routes) {
  const Lane l = lane_of(P);
  const int64_t seq = (static_cast<int64_t>(l.b) * P.routes + l.k) * P.channels + l.d;
  float A[kStatesPerLane], h[kStatesPerLane];
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) {
    const int n = l.lane + i * P.lanes_per_channel;
    A[i] = n < P.dstate ? P.A[(static_cast<int64_t>(l.k) * P.channels + l.d) * P.dstate + n] : 0.f;
    h[i] = 0.f;
  }
  const int64_t param = static_cast<int64_t>(l.k) * P.channels + l.d;
  const float bias = P.delta_bias ? P.delta_bias[param] : 0.f;
  const float skip = P.D ? P.D[param] : 0.f;

  // Positions go in groups of kStage: the group's token data are loaded first, all loads in flight
  // together (they do not depend on h), then the recurrence runs through them.
  for (int64_t start = 0; start < P.length; start += kStage) {
    TokenStep steps[kStage];
    float Bs[kStage][kStatesPerLane], Cs[kStage][kStatesPerLane];
#pragma unroll
    for (int t = 0; t < kStage; ++t) {
      if (start + t < P.length) {
        steps[t] = load_step<T>(P, routes, l, bias, start + t);
#pragma unroll
        for (int i = 0; i < kStatesPerLane; ++i) {
          const int n = l.lane + i * P.lanes_per_channel;
          const bool live = n < P.dstate;
          Bs[t][i] = live ? load_state<T>(P.B, steps[t].m, l.b, l.k, l.group_B, n, steps[t].e) : 0.f;
          Cs[t][i] = live ? load_state<T>(P.C, steps[t].m, l.b, l.k, l.group_C, n, steps[t].e) : 0.f;
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kStage; ++t) {
      const int64_t p = start + t;
      if (p < P.length) {
        if (P.chunk_states && p % kChunkLength == 0 && l.active) {
#pragma unroll
          for (int i = 0; i < kStatesPerLane; ++i) {
            const int n = l.lane + i * P.lanes_per_channel;
            if (n < P.dstate) P.chunk_states[(seq * P.chunks + p / kChunkLength) * P.dstate + n] = h[i];
          }
        }
        const TokenStep& s = steps[t];
        float readout = 0.f;
#pragma unroll
        for (int i = 0; i < kStatesPerLane; ++i) {
          // lanes past N hold A = 0, B = C = 0: their h stays 0 and adds nothing
          h[i] = decay(s.dt, A[i]) * h[i] + s.dt * Bs[t][i] * s.u;
          readout += Cs[t][i] * h[i];
        }
        readout = group_sum(readout, P.lanes_per_channel);
        if (P.y.data[0] && l.active && l.lane == 0 && !s.pad) {
          float y = readout + skip * s.u;
          if (P.z.data[0]) y *= silu(load_map<T>(P.z, 0, l.b, s.uc, s.ur, s.uw));
          store(P.atomic_routes, &P.y.data[s.m][map_offset(P.y, l.b, l.k, s.yc, s.yr, s.yw)], y);
        }
      }
    }
  }
  if (P.last_state && l.active) {
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) {
      const int n = l.lane + i * P.lanes_per_channel;
      if (n < P.dstate) P.last_state[seq * P.dstate + n] = h[i];
    }
  }
}

template <typename T, int kStatesPerLane, typename Routes>
XSCAN_KERNEL scan_backward_kernel(const ScanParams P, const Routes routes) {
  float* shared = dynamic_shared();
  const Lane l = lane_of(P);
  const int N = P.dstate;
  const int tiles = P.group_tiles * P.tiles_per_group;
  // Per-chunk contributions of this block's channels to dB and dC: [channel][n][position in chunk].
  float* dB_shared = shared;
  float* dC_shared = shared + P.channels_per_tile * N * kChunkLength;

  const int64_t seq = (static_cast<int64_t>(l.b) * P.routes + l.k) * P.channels + l.d;
  const int64_t param = static_cast<int64_t>(l.k) * P.channels + l.d;
  const float bias = P.delta_bias ? P.delta_bias[param] : 0.f;
  const float skip = P.D ? P.D[param] : 0.f;
  float A[kStatesPerLane], adjoint[kStatesPerLane], dA[kStatesPerLane];
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) {
    const int n = l.lane + i * P.lanes_per_channel;
    A[i] = n < N ? P.A[param * N + n] : 0.f;
    // dLoss/dh_t from positions after t, already multiplied by their decay; at the end, dLoss/dlast_state
    adjoint[i] = P.dlast_state && n < N ? P.dlast_state[seq * N + n] : 0.f;
    dA[i] = 0.f;
  }
  float dskip = 0.f, dbias = 0.f;

  for (int chunk = P.chunks - 1; chunk >= 0; --chunk) {
    const int64_t start = static_cast<int64_t>(chunk) * kChunkLength;
    float h_start[kStatesPerLane], hs[kStatesPerLane][kChunkLength];
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) {
      const int n = l.lane + i * P.lanes_per_channel;
      h_start[i] = n < N ? P.chunk_states[(seq * P.chunks + chunk) * N + n] : 0.f;
    }
    // Recompute the chunk's states.
#pragma unroll
    for (int t = 0; t < kChunkLength; ++t) {
      if (start + t < P.length) {
        const TokenStep s = load_step<T>(P, routes, l, bias, start + t);
#pragma unroll
        for (int i = 0; i < kStatesPerLane; ++i) {
          const int n = l.lane + i * P.lanes_per_channel;
          const float prev = t == 0 ? h_start[i] : hs[i][t > 0 ? t - 1 : 0];
          const float Bn = n < N ? load_state<T>(P.B, s.m, l.b, l.k, l.group_B, n, s.e) : 0.f;
          hs[i][t] = decay(s.dt, A[i]) * prev + s.dt * Bn * s.u;
        }
      }
    }
    // The adjoint recurrence through the chunk, last position first.
#pragma unroll
    for (int t = kChunkLength - 1; t >= 0; --t) {
      if (start + t < P.length) {
        const TokenStep s = load_step<T>(P, routes, l, bias, start + t);
        float dout = 0.f;
        if (!s.pad) dout = P.dout.data[s.m][map_offset(P.dout, l.b, 0, s.yc, s.yr, s.yw)];
        float Bn[kStatesPerLane], Cn[kStatesPerLane];
        float readout = 0.f;
#pragma unroll
        for (int i = 0; i < kStatesPerLane; ++i) {
          const int n = l.lane + i * P.lanes_per_channel;
          Bn[i] = n < N ? load_state<T>(P.B, s.m, l.b, l.k, l.group_B, n, s.e) : 0.f;
          Cn[i] = n < N ? load_state<T>(P.C, s.m, l.b, l.k, l.group_C, n, s.e) : 0.f;
          readout += Cn[i] * hs[i][t];
        }
        float dy = dout;
        if (P.z.data[0]) {  // selective_scan only: y = (C.h + D u) * silu(z)
          const float y = group_sum(readout, P.lanes_per_channel) + skip * s.u;
          const float z = load_map<T>(P.z, 0, l.b, s.uc, s.ur, s.uw);
          dy = dout * silu(z);
          if (l.active && l.lane == 0)
            P.dz[l.b * P.dz_stride_b + s.uc * P.dz_stride_c + s.ur * P.dz_stride_h + s.uw * P.dz_stride_w] =
                dout * y * silu_grad(z);
        }
        float du = 0.f, ddt = 0.f;
#pragma unroll
        for (int i = 0; i < kStatesPerLane; ++i) {
          const int n = l.lane + i * P.lanes_per_channel;
          const float prev = t == 0 ? h_start[i] : hs[i][t > 0 ? t - 1 : 0];
          const float a = decay(s.dt, A[i]);
          adjoint[i] += Cn[i] * dy;
          du += adjoint[i] * s.dt * Bn[i];
          ddt += adjoint[i] * (Bn[i] * s.u + A[i] * a * prev);
          dA[i] += adjoint[i] * s.dt * a * prev;
          if (n < N) {
            const int cell = (l.local_channel * N + n) * kChunkLength + t;
            dB_shared[cell] = l.active ? adjoint[i] * s.dt * s.u : 0.f;
            dC_shared[cell] = l.active ? dy * hs[i][t] : 0.f;
          }
          adjoint[i] *= a;
        }
        du = group_sum(du, P.lanes_per_channel) + skip * dy;
        ddt = group_sum(ddt, P.lanes_per_channel);
        const float ddelta = P.delta_softplus ? ddt * softplus_grad(s.delta_raw) : ddt;
        dskip += dy * s.u;
        dbias += ddelta;
        if (l.active && l.lane == 0) {
          if (!s.pad)
            store(P.atomic_routes, &P.du.data[s.m][map_offset(P.du, l.b, l.k, s.uc, s.ur, s.uw)], du);
          P.ddelta[s.m][l.b * P.ddelta_stride_b + l.k * P.ddelta_stride_k + l.d * P.ddelta_stride_c +
                            s.e * P.ddelta_stride_t] = ddelta;
        }
      }
    }
    // dB, dC of this chunk: sum the block's channels in a fixed order, one partial per tile.
    __syncthreads();
    const int cells = N * kChunkLength;
    for (int cell = threadIdx.x; cell < cells; cell += kThreadsPerBlock) {
      const int n = cell / kChunkLength, t = cell % kChunkLength;
      if (start + t >= P.length) continue;
      float sum_B = 0.f, sum_C = 0.f;
      for (int c = 0; c < P.channels_per_tile; ++c) {
        sum_B += dB_shared[(c * N + n) * kChunkLength + t];
        sum_C += dC_shared[(c * N + n) * kChunkLength + t];
      }
      const Token pos = routes.at(l.k, start + t);
      const int64_t token = static_cast<int64_t>(pos.m) * P.tokens + pos.e;
      const int64_t row = static_cast<int64_t>(l.b) * P.routes + l.k;
      const int64_t per_state = static_cast<int64_t>(P.modalities) * P.tokens;
      if (P.atomic_state_grads) {  // straight into dB (Bt, K, G_B, N, M*T) and dC (Bt, K, G_C, N, M*T)
        atomicAdd(&P.dB_part[((row * P.groups_B + l.tile_group_B) * N + n) * per_state + token], sum_B);
        atomicAdd(&P.dC_part[((row * P.groups_C + l.tile_group_C) * N + n) * per_state + token], sum_C);
      } else {
        const int64_t at = ((row * tiles + l.tile) * N + n) * per_state + token;
        P.dB_part[at] = sum_B;
        P.dC_part[at] = sum_C;
      }
    }
    __syncthreads();
  }
  if (l.active) {
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) {
      const int n = l.lane + i * P.lanes_per_channel;
      if (n < N) P.dA_part[seq * N + n] = dA[i];
    }
    if (l.lane == 0) {
      if (P.dD_part) P.dD_part[seq] = dskip;
      if (P.ddelta_bias_part) P.ddelta_bias_part[seq] = dbias;
    }
  }
}

// Launch rules shared by the CUDA launchers and the host emulation.

// N <= 32: one state per lane (lanes_per_channel >= N); 32 < N <= 64: two states per lane.
inline bool two_states_per_lane(const ScanParams& P) { return P.lanes_per_channel < P.dstate; }

inline size_t backward_shared_bytes(const ScanParams& P) {
  return 2 * sizeof(float) * static_cast<size_t>(P.channels_per_tile) * P.dstate * kChunkLength;
}

// The backward first reruns the forward with only the chunk start states as output.
inline ScanParams state_saving_pass(const ScanParams& P) {
  ScanParams saving = P;
  saving.y.data[0] = saving.y.data[1] = nullptr;
  saving.last_state = nullptr;
  return saving;
}

}  // namespace cuda
}  // namespace xscan
