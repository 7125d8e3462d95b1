// The scan kernels, templated on the per-token input type (float, __half, __nv_bfloat16), the number
// of states each lane holds and the route policy (xscan/routes.h, the CPU engine's own, with 32-bit
// indices: a position's route location is inlined 32-bit arithmetic, no 64-bit division calls).
// Plain CUDA: no torch headers (the CPU torch wheel has none).
//
// Work split: a block owns one (batch b, route k, tile of channels) and, for a split sequence, one
// span of its positions: grid (batch x tiles, routes, spans). Each channel is scanned by a group of
// `lanes_per_channel` lanes (a power of 2) of one warp, each lane holding `kStatesPerLane` (1 to 3)
// of the N states; C.h is summed over the group with warp shuffles. Time runs sequentially inside
// the block. All accumulation is fp32; outputs and gradients are fp32 (the caller casts them).
//
// Inputs are loaded a stage of positions at a time, all loads of a stage in flight before the math
// that uses them (and before the stage's stores).
//
// Backward: the forward is rerun with the state saved at the start of every kChunkLength positions;
// the backward walks the chunks in reverse, recomputes the states of one chunk into shared memory
// (each thread its own column, so the loops over a chunk need not be unrolled to keep the states in
// registers: the kernel stays a few thousand instructions) and runs the adjoint recurrence through
// it. dB and dC (shared by the channels of a group) are summed over the block's channels in shared memory in a fixed order, then written as per-tile partials that the
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
// Kernels ask for 2 resident blocks per SM, no more: left free, ptxas held some variants at fewer
// registers (168 for 3 blocks of the backward, 48 for the span summary, 128 for a forward) and
// spilled 4-40 bytes.
#define XSCAN_KERNEL __global__ void __launch_bounds__(kThreadsPerBlock, 2)
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

// The launch grid: x = (batch b, channel tile), tiles fastest (x takes 2^31 - 1 blocks, y and z
// only 65,535); y = route k; z = span of a split sequence.
struct GridSize {
  unsigned x, y, z;
};
XSCAN_HD int scan_tiles(const ScanParams& P) { return P.group_tiles * P.tiles_per_group; }
inline GridSize scan_grid_size(const ScanParams& P) {
  return {static_cast<unsigned>(scan_tiles(P)) * static_cast<unsigned>(P.batch), static_cast<unsigned>(P.routes),
          static_cast<unsigned>(P.segments)};
}

// The block's span of its sequence: positions [first, end) (the whole sequence unless split), and
// its row in the per-span buffers.
struct Span {
  int index;
  int32_t first, end;
};

XSCAN_DEVICE Span span_of(const ScanParams& P) {
  if (P.segments == 1) return Span{0, 0, P.length};
  const int32_t first = static_cast<int32_t>(blockIdx.z) * P.span_length;
  return Span{static_cast<int>(blockIdx.z), first, P.length - first < P.span_length ? P.length : first + P.span_length};
}

// The span's row (sequence seq = (b, k, d)) in the per-span buffers: span_states, span_dt,
// span_adjoints, and the split backward's partials.
XSCAN_DEVICE int64_t span_row(const ScanParams& P, int64_t seq, const Span& span) {
  return seq * P.segments + span.index;
}

// The thread's place in the launch: its channel, lane in the channel's group, groups of B and C.
struct Lane {
  int b, k, tile, local_channel, lane, d, group_B, group_C;
  int tile_group_B, tile_group_C;  // the B and C groups of the whole tile (a tile never straddles one)
  bool active;  // false for lanes past the tile's last channel: they compute on channel 0 and write nothing
};

XSCAN_DEVICE Lane lane_of(const ScanParams& P) {
  Lane l;
  const int tiles = scan_tiles(P);
  l.tile = blockIdx.x % tiles;
  l.b = blockIdx.x / tiles;
  l.k = blockIdx.y;
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

// Positions whose inputs are loaded together, ahead of the math that uses them: all loads of a stage
// are in flight at once (they depend neither on the state nor on the stage's stores).
// The backward stages fewer positions than the forward: its chunk's states already take registers.
constexpr int kStage = 8, kBackwardStage = 4;
static_assert(kChunkLength % kStage == 0 && kChunkLength % kBackwardStage == 0,
              "chunk starts must fall on a stage's first position");

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
XSCAN_DEVICE TokenStep load_step(const ScanParams& P, const Routes& routes, const Lane& l, float bias, int32_t p) {
  auto t = routes.at(l.k, p);
  routes.source(l.d, t);
  TokenStep s;
  s.m = t.m, s.pad = t.pad;
  s.e = t.e, s.uc = t.uc, s.ur = t.ur, s.uw = t.uw, s.yc = t.yc, s.yr = t.yr, s.yw = t.yw;
  s.delta_raw = load_token<T>(P.delta, s.m, l.b, l.k, l.d, s.e) + bias;
  s.dt = P.delta_softplus ? softplus(s.delta_raw) : s.delta_raw;
  s.u = s.pad ? 0.f : load_map<T>(P.u, s.m, l.b, s.uc, s.ur, s.uw);
  return s;
}

// The state n of lane slot i.
XSCAN_DEVICE int state_of(const ScanParams& P, const Lane& l, int i) { return l.lane + i * P.lanes_per_channel; }

// A position's B (and C) for the lane's states; 0 past N.
template <typename T, int kStatesPerLane>
XSCAN_DEVICE void load_states(const ScanParams& P, const TokenTensor& t, const Lane& l, int group, const TokenStep& s,
                              float (&out)[kStatesPerLane]) {
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) {
    const int n = state_of(P, l, i);
    out[i] = n < P.dstate ? load_state<T>(t, s.m, l.b, l.k, group, n, s.e) : 0.f;
  }
}

// The gradient of the position's output (0 at padding, which has no output).
XSCAN_DEVICE float load_dout(const ScanParams& P, const Lane& l, const TokenStep& s) {
  return s.pad ? 0.f : P.dout.data[s.m][map_offset(P.dout, l.b, 0, s.yc, s.yr, s.yw)];
}

// z at the position's pixel of u (selective_scan only; 0 when there is no z).
template <typename T>
XSCAN_DEVICE float load_gate(const ScanParams& P, const Lane& l, const TokenStep& s) {
  return P.z.data[0] ? load_map<T>(P.z, 0, l.b, s.uc, s.ur, s.uw) : 0.f;
}

template <typename T, int kStatesPerLane, typename Routes>
XSCAN_KERNEL scan_forward_kernel(const ScanParams P, const Routes routes) {
  const Lane l = lane_of(P);
  const Span span = span_of(P);
  const int64_t seq = (static_cast<int64_t>(l.b) * P.routes + l.k) * P.channels + l.d;
  float A[kStatesPerLane], h[kStatesPerLane];
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) {
    const int n = state_of(P, l, i);
    A[i] = n < P.dstate ? P.A[(static_cast<int64_t>(l.k) * P.channels + l.d) * P.dstate + n] : 0.f;
    // a span of a split sequence starts from its carried state, except in the summary pass
    const bool carried = P.segments > 1 && !P.span_summary && n < P.dstate;
    h[i] = carried ? P.span_states[span_row(P, seq, span) * P.dstate + n] : 0.f;
  }
  const int64_t param = static_cast<int64_t>(l.k) * P.channels + l.d;
  const float bias = P.delta_bias ? P.delta_bias[param] : 0.f;
  const float skip = P.D ? P.D[param] : 0.f;
  float dt_sum = 0.f;  // the summary pass's: the span's decay is exp(A dt_sum)

  for (int32_t start = span.first; start < span.end; start += kStage) {
    TokenStep steps[kStage];
    float Bs[kStage][kStatesPerLane], Cs[kStage][kStatesPerLane], zs[kStage];
#pragma unroll
    for (int t = 0; t < kStage; ++t) {
      if (start + t < span.end) {
        steps[t] = load_step<T>(P, routes, l, bias, start + t);
        load_states<T>(P, P.B, l, l.group_B, steps[t], Bs[t]);
        load_states<T>(P, P.C, l, l.group_C, steps[t], Cs[t]);
        zs[t] = load_gate<T>(P, l, steps[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < kStage; ++t) {
      const int32_t p = start + t;
      if (p < span.end) {
        if (P.chunk_states && p % kChunkLength == 0 && l.active) {
#pragma unroll
          for (int i = 0; i < kStatesPerLane; ++i) {
            const int n = state_of(P, l, i);
            if (n < P.dstate) P.chunk_states[(seq * P.chunks + p / kChunkLength) * P.dstate + n] = h[i];
          }
        }
        const TokenStep& s = steps[t];
        if (P.span_summary) dt_sum += s.dt;
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
          if (P.z.data[0]) y *= silu(zs[t]);
          store(P.atomic_routes, &P.y.data[s.m][map_offset(P.y, l.b, l.k, s.yc, s.yr, s.yw)], y);
        }
      }
    }
  }
  if (P.span_summary && l.active) {
    const int64_t row = span_row(P, seq, span);
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) {
      const int n = state_of(P, l, i);
      if (n < P.dstate) P.span_states[row * P.dstate + n] = h[i];
    }
    if (l.lane == 0) P.span_dt[row] = dt_sum;
  }
  if (P.last_state && l.active && span.index == P.segments - 1) {
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) {
      const int n = state_of(P, l, i);
      if (n < P.dstate) P.last_state[seq * P.dstate + n] = h[i];
    }
  }
}

// The summary of a split sequence's spans for the backward: the adjoint each span passes to the
// state before it when nothing enters it from its successors (linear in what enters: the span's
// decay exp(A span_dt) times that, plus this).
template <typename T, int kStatesPerLane, typename Routes>
XSCAN_KERNEL span_adjoint_kernel(const ScanParams P, const Routes routes) {
  const Lane l = lane_of(P);
  const Span span = span_of(P);
  const int64_t seq = (static_cast<int64_t>(l.b) * P.routes + l.k) * P.channels + l.d;
  const int64_t param = static_cast<int64_t>(l.k) * P.channels + l.d;
  const float bias = P.delta_bias ? P.delta_bias[param] : 0.f;
  float A[kStatesPerLane], adjoint[kStatesPerLane];
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) {
    const int n = state_of(P, l, i);
    A[i] = n < P.dstate ? P.A[param * P.dstate + n] : 0.f;
    adjoint[i] = 0.f;
  }
  for (int32_t stop = span.end; stop > span.first; stop -= kBackwardStage) {
    TokenStep steps[kBackwardStage];
    float Cs[kBackwardStage][kStatesPerLane], dys[kBackwardStage];
#pragma unroll
    for (int j = 0; j < kBackwardStage; ++j) {  // positions stop - 1, stop - 2, ...
      if (stop - 1 - j >= span.first) {
        steps[j] = load_step<T>(P, routes, l, bias, stop - 1 - j);
        const TokenStep& s = steps[j];
        load_states<T>(P, P.C, l, l.group_C, s, Cs[j]);
        const float dout = load_dout(P, l, s);
        dys[j] = P.z.data[0] ? dout * silu(load_gate<T>(P, l, s)) : dout;
      }
    }
#pragma unroll
    for (int j = 0; j < kBackwardStage; ++j) {
      if (stop - 1 - j >= span.first) {
#pragma unroll
        for (int i = 0; i < kStatesPerLane; ++i)
          adjoint[i] = (adjoint[i] + Cs[j][i] * dys[j]) * decay(steps[j].dt, A[i]);
      }
    }
  }
  if (l.active) {
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) {
      const int n = state_of(P, l, i);
      if (n < P.dstate) P.span_adjoints[span_row(P, seq, span) * P.dstate + n] = adjoint[i];
    }
  }
}

// The carry over a split sequence's spans, one thread per (sequence, state), grid
// (ceil(K Dm / threads), N, Bt): turns each span's summary (span_states, or span_adjoints when
// kReverse) into what enters the span: h <- exp(A span_dt) h + summary, from the first span with
// h = 0, or from the last with the gradient of the last state.
template <bool kReverse>
XSCAN_KERNEL span_carry_kernel(const ScanParams P) {
  const int32_t param = static_cast<int32_t>(blockIdx.x) * kThreadsPerBlock + threadIdx.x;  // k Dm + d
  if (param >= P.routes * P.channels) return;
  const int n = blockIdx.y;
  const int64_t seq = static_cast<int64_t>(blockIdx.z) * P.routes * P.channels + param;
  const float A = P.A[static_cast<int64_t>(param) * P.dstate + n];
  float* spans = kReverse ? P.span_adjoints : P.span_states;
  float carry = kReverse && P.dlast_state ? P.dlast_state[seq * P.dstate + n] : 0.f;
  for (int i = 0; i < P.segments; ++i) {
    const int64_t row = seq * P.segments + (kReverse ? P.segments - 1 - i : i);
    const float summary = spans[row * P.dstate + n];
    spans[row * P.dstate + n] = carry;
    carry = decay(P.span_dt[row], A) * carry + summary;
  }
}

// The backward's shared memory, per chunk: the block's channels' contributions to dB and dC,
// [position t][channel c][state n], each position's row padded by one float so that both the
// lanes' stores (consecutive (c, n)) and the reduction's loads (consecutive t) hit distinct banks;
// then the recomputed states, [state slot i][position t][thread], each thread's own.
XSCAN_HD int partial_row(const ScanParams& P) { return P.channels_per_tile * P.dstate + 1; }
XSCAN_HD size_t partial_floats(const ScanParams& P) { return 2 * static_cast<size_t>(kChunkLength) * partial_row(P); }

// Inputs of one position of the adjoint sweep, loaded a stage ahead of its math.
template <int kStatesPerLane>
struct AdjointStep {
  TokenStep s;
  float B[kStatesPerLane], C[kStatesPerLane];
  float z, dout;
  float h[kStatesPerLane], prev[kStatesPerLane];  // the state after this position and before it
};

template <typename T, int kStatesPerLane, typename Routes>
XSCAN_KERNEL scan_backward_kernel(const ScanParams P, const Routes routes) {
  float* shared = dynamic_shared();
  const Lane l = lane_of(P);
  const Span span = span_of(P);
  const int N = P.dstate;
  const int row_floats = partial_row(P);
  float* dB_shared = shared;
  float* dC_shared = shared + kChunkLength * row_floats;
  float* states = shared + partial_floats(P) + threadIdx.x;  // states[(i * kChunkLength + t) * kThreadsPerBlock]
  auto state_at = [&](int i, int t) -> float& { return states[(i * kChunkLength + t) * kThreadsPerBlock]; };

  const int64_t seq = (static_cast<int64_t>(l.b) * P.routes + l.k) * P.channels + l.d;
  const int64_t param = static_cast<int64_t>(l.k) * P.channels + l.d;
  const float bias = P.delta_bias ? P.delta_bias[param] : 0.f;
  const float skip = P.D ? P.D[param] : 0.f;
  // dLoss/dh at the span's end: dLoss/dlast_state, or for a span of a split sequence what its
  // successors pass it (carried)
  const float* entering = P.segments > 1 ? P.span_adjoints + span_row(P, seq, span) * N
                          : P.dlast_state ? P.dlast_state + seq * N : nullptr;
  float A[kStatesPerLane], adjoint[kStatesPerLane], dA[kStatesPerLane];
#pragma unroll
  for (int i = 0; i < kStatesPerLane; ++i) {
    const int n = state_of(P, l, i);
    A[i] = n < N ? P.A[param * N + n] : 0.f;
    // dLoss/dh_t from positions after t, already multiplied by their decay
    adjoint[i] = entering && n < N ? entering[n] : 0.f;
    dA[i] = 0.f;
  }
  float dskip = 0.f, dbias = 0.f;

  for (int chunk = (span.end - 1) / kChunkLength; chunk >= span.first / kChunkLength; --chunk) {
    const int32_t start = chunk * kChunkLength;
    float h_start[kStatesPerLane], h[kStatesPerLane];
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) {
      const int n = state_of(P, l, i);
      h[i] = h_start[i] = n < N ? P.chunk_states[(seq * P.chunks + chunk) * N + n] : 0.f;
    }
    // Recompute the chunk's states into shared memory, a stage at a time (loads first).
#pragma unroll 1
    for (int stage = 0; stage < kChunkLength && start + stage < P.length; stage += kBackwardStage) {
      TokenStep steps[kBackwardStage];
      float Bs[kBackwardStage][kStatesPerLane];
#pragma unroll
      for (int j = 0; j < kBackwardStage; ++j) {
        if (start + stage + j < P.length) {
          steps[j] = load_step<T>(P, routes, l, bias, start + stage + j);
          load_states<T>(P, P.B, l, l.group_B, steps[j], Bs[j]);
        }
      }
#pragma unroll
      for (int j = 0; j < kBackwardStage; ++j) {
        if (start + stage + j < P.length) {
#pragma unroll
          for (int i = 0; i < kStatesPerLane; ++i) {
            h[i] = decay(steps[j].dt, A[i]) * h[i] + steps[j].dt * Bs[j][i] * steps[j].u;
            state_at(i, stage + j) = h[i];
          }
        }
      }
    }
    // The adjoint recurrence through the chunk, last stage first, each stage's inputs loaded before
    // its gradient stores.
#pragma unroll 1
    for (int stage = kChunkLength - kBackwardStage; stage >= 0; stage -= kBackwardStage) {
      if (start + stage >= P.length) continue;
      AdjointStep<kStatesPerLane> in[kBackwardStage];
#pragma unroll
      for (int j = 0; j < kBackwardStage; ++j) {
        const int t = stage + j;
        if (start + t < P.length) {
          AdjointStep<kStatesPerLane>& x = in[j];
          x.s = load_step<T>(P, routes, l, bias, start + t);
          load_states<T>(P, P.B, l, l.group_B, x.s, x.B);
          load_states<T>(P, P.C, l, l.group_C, x.s, x.C);
          x.z = load_gate<T>(P, l, x.s);
          x.dout = load_dout(P, l, x.s);
#pragma unroll
          for (int i = 0; i < kStatesPerLane; ++i) {
            x.h[i] = state_at(i, t);
            x.prev[i] = t == 0 ? h_start[i] : state_at(i, t > 0 ? t - 1 : 0);
          }
        }
      }
#pragma unroll
      for (int j = kBackwardStage - 1; j >= 0; --j) {
        const int t = stage + j;
        if (start + t < P.length) {
          const AdjointStep<kStatesPerLane>& x = in[j];
          const TokenStep& s = x.s;
          float dy = x.dout;
          if (P.z.data[0]) {  // selective_scan only: y = (C.h + D u) * silu(z)
            float readout = 0.f;
#pragma unroll
            for (int i = 0; i < kStatesPerLane; ++i) readout += x.C[i] * x.h[i];
            const float y = group_sum(readout, P.lanes_per_channel) + skip * s.u;
            dy = x.dout * silu(x.z);
            if (l.active && l.lane == 0)
              P.dz[l.b * P.dz_stride_b + s.uc * P.dz_stride_c + s.ur * P.dz_stride_h + s.uw * P.dz_stride_w] =
                  x.dout * y * silu_grad(x.z);
          }
          float du = 0.f, ddt = 0.f;
#pragma unroll
          for (int i = 0; i < kStatesPerLane; ++i) {
            const int n = state_of(P, l, i);
            const float a = decay(s.dt, A[i]);
            adjoint[i] += x.C[i] * dy;
            du += adjoint[i] * s.dt * x.B[i];
            ddt += adjoint[i] * (x.B[i] * s.u + A[i] * a * x.prev[i]);
            dA[i] += adjoint[i] * s.dt * a * x.prev[i];
            if (n < N) {
              const int cell = t * row_floats + l.local_channel * N + n;
              dB_shared[cell] = l.active ? adjoint[i] * s.dt * s.u : 0.f;
              dC_shared[cell] = l.active ? dy * x.h[i] : 0.f;
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
    }
    // dB, dC of this chunk: sum the block's channels in a fixed order, one partial per tile.
    __syncthreads();
    const int cells = N * kChunkLength;
    for (int cell = threadIdx.x; cell < cells; cell += kThreadsPerBlock) {
      const int n = cell / kChunkLength, t = cell % kChunkLength;
      if (start + t >= P.length) continue;
      float sum_B = 0.f, sum_C = 0.f;
      for (int c = 0; c < P.channels_per_tile; ++c) {
        sum_B += dB_shared[t * row_floats + c * N + n];
        sum_C += dC_shared[t * row_floats + c * N + n];
      }
      const auto pos = routes.at(l.k, start + t);
      const int64_t token = static_cast<int64_t>(pos.m) * P.tokens + pos.e;
      const int64_t row = static_cast<int64_t>(l.b) * P.routes + l.k;
      const int64_t per_state = static_cast<int64_t>(P.modalities) * P.tokens;
      if (P.atomic_state_grads) {  // straight into dB (Bt, K, G_B, N, M*T) and dC (Bt, K, G_C, N, M*T)
        atomicAdd(&P.dB_part[((row * P.groups_B + l.tile_group_B) * N + n) * per_state + token], sum_B);
        atomicAdd(&P.dC_part[((row * P.groups_C + l.tile_group_C) * N + n) * per_state + token], sum_C);
      } else {
        const int64_t at = ((row * scan_tiles(P) + l.tile) * N + n) * per_state + token;
        P.dB_part[at] = sum_B;
        P.dC_part[at] = sum_C;
      }
    }
    __syncthreads();
  }
  if (l.active) {
    const int64_t part = P.segments > 1 ? span_row(P, seq, span) : seq;  // this block's partials' row
#pragma unroll
    for (int i = 0; i < kStatesPerLane; ++i) {
      const int n = state_of(P, l, i);
      if (n < N) P.dA_part[part * N + n] = dA[i];
    }
    if (l.lane == 0) {
      if (P.dD_part) P.dD_part[part] = dskip;
      if (P.ddelta_bias_part) P.ddelta_bias_part[part] = dbias;
    }
  }
}

// Launch rules shared by the CUDA launchers and the host emulation.

inline size_t backward_shared_bytes(const ScanParams& P) {
  const size_t states = static_cast<size_t>(states_per_lane(P)) * kChunkLength * kThreadsPerBlock;
  return sizeof(float) * (partial_floats(P) + states);
}

// The backward first reruns the forward with only the chunk start states as output.
inline ScanParams state_saving_pass(const ScanParams& P) {
  ScanParams saving = P;
  saving.y.data[0] = saving.y.data[1] = nullptr;
  saving.last_state = nullptr;
  return saving;
}

// A split forward's first pass: every span from a zero state, only its summary as output.
inline ScanParams span_summary_pass(const ScanParams& P) {
  ScanParams summary = state_saving_pass(P);
  summary.chunk_states = nullptr;
  summary.span_summary = true;
  return summary;
}

inline GridSize span_carry_grid(const ScanParams& P) {
  const unsigned params = static_cast<unsigned>(P.routes) * static_cast<unsigned>(P.channels);
  return {(params + kThreadsPerBlock - 1) / kThreadsPerBlock, static_cast<unsigned>(P.dstate),
          static_cast<unsigned>(P.batch)};
}

}  // namespace cuda
}  // namespace xscan
