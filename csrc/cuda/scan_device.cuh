// The scan kernels, templated on the per-token input type (float, __half, __nv_bfloat16) and the
// route policy (csrc/include/xscan/routes.h, the CPU engine's own, with 32-bit indices: a position's route
// location is inlined 32-bit arithmetic). Plain CUDA: no torch headers (the CPU torch wheel has none).
//
// Layout (position-parallel, as the fastest selective-scan kernels): a sequence (batch b, route k,
// channel d) is scanned by `warps_per_channel` (W) warps of a 128-thread block; each lane owns
// kItems consecutive positions of a chunk of W * 32 * kItems positions (the forward, mostly 2
// kItems of a chunk twice as long: kForwardItems), so a position's route location, dt (and its
// softplus), u and z are computed once per channel, not once per state. The N states are looped
// with each state's (decay, increment) pairs in registers: a lane folds its own positions, a warp
// scan (shuffles) and, for W > 1, a combine of the warps' totals in shared memory give each lane
// the state entering its positions, from the chunk's start state, which is carried from chunk to
// chunk in shared memory. A block holds 4 / W channels of one B and C group (a "tile"); grid
// (batch x tiles, routes, spans). All accumulation is fp32; outputs and gradients are fp32 (the
// caller casts them).
//
// Backward: from each chunk's start state, saved by the forward (or by a rerun of it first, when
// the forward did not save them), the backward walks the chunks last to first and, per state,
// recomputes the chunk's states by the same scan, runs the adjoint recurrence as a reverse scan
// (the adjoint a position passes to the one before it is q_t = a_t (C_t dy_t + q_{t+1}), carried
// from chunk to chunk), and accumulates the gradients of every argument. dB and dC (shared by a group's channels) are
// summed over the block's channels in shared memory in a fixed order, then written as per-tile partials that the caller
// sums (deterministic), or added into one buffer with float atomics (atomic_state_grads).
//
// Under nvcc this is plain CUDA. Without nvcc (the host emulation in tests/backends/cuda_emulator/)
// the includer first defines threadIdx, blockIdx, __shfl_{xor,up,down}_sync, __syncwarp,
// __syncthreads, atomicAdd, dynamic_shared(), __half and __nv_bfloat16 with their conversions to
// float, and runs each kernel once per emulated thread.
#pragma once

#include "scan_params.h"
#include "xscan/routes.h"
#include "xscan/scan_math.h"

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define XSCAN_DEVICE __device__ __forceinline__
// A kernel and the resident blocks per SM it asks for (XSCAN_KERNEL(blocks)): the forward 3
// (kForwardBlocksPerSM), the backward 2, no more (held at 168 registers, it spilled).
// benchmarks/per_element.py defines XSCAN_KERNEL first to compile them as device functions inside
// its own kernels.
#ifndef XSCAN_KERNEL
#define XSCAN_KERNEL(blocks) __global__ void __launch_bounds__(kThreadsPerBlock, blocks)
#endif
#else
#define XSCAN_DEVICE inline
#define XSCAN_KERNEL(blocks) void
#endif

namespace xscan {
namespace cuda {

constexpr int kBackwardBlocksPerSM = 2;

// The most positions per lane of a route policy's forward: 2 kItems, a chunk of two of the
// backward's (half the scan's and the state loop's fixed work per position), but kItems where the
// positions alternate the modalities' rows of dt, B and C (CROSS_PAIR). At 16 that forward fits 3
// blocks' registers without spills and issues 11% fewer instructions, but on a simulated GPU at
// S4Fusion's 2 blocks per SM it took 55% more cycles, with 54% more L1 accesses for the same data
// (benchmarks/RESULTS.md, 2026-12-04 night). forward_items picks a launch's.
template <typename Routes>
constexpr int kForwardItems = Routes::kPositionsPerToken == 2 ? kItems : 2 * kItems;

// The forward's resident blocks per SM at I positions per lane: at 16, 3 (168 registers, no spills;
// left free, ptxas takes 180-195: 2 blocks); at 8, 2 (ptxas takes about 128: 4 blocks).
template <int I>
constexpr int kForwardBlocksPerSM = I == kItems ? 2 : 3;

// A launch's forward positions per lane: the policy's most, where the blocks' spans hold at least one
// whole chunk of them (else kItems: a short sequence, es2d's sub-lattices of small maps, would scan
// a chunk twice as long, mostly past its end).
template <typename Routes>
int forward_items(const ScanParams& P) {
  const int32_t span = P.segments > 1 ? P.span_length : P.length;
  return span >= (kForwardItems<Routes> / kItems) * P.chunk_length ? kForwardItems<Routes> : kItems;
}

constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;

XSCAN_DEVICE float to_float(float x) { return x; }
XSCAN_DEVICE float to_float(__half x) { return __half2float(x); }
XSCAN_DEVICE float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

#ifdef __CUDACC__
XSCAN_DEVICE float* dynamic_shared() {
  extern __shared__ float shared[];
  return shared;
}
#endif

// exp(dt A) as 2^(dt A log2(e)), with A log2(e) taken once per state: on the GPU one multiply and
// one ex2.approx, what __expf(dt A) costs after its own multiply by log2(e).
XSCAN_DEVICE float decay_of(float dt, float A_log2) { return exp2_acc(dt * A_log2); }

// x, computed here once: nvcc would otherwise recompute a sum of a lane's dt inside the state loop
// that reads it, once per state.
XSCAN_DEVICE float computed_once(float x) {
#ifdef __CUDA_ARCH__
  asm volatile("" : "+f"(x));
#endif
  return x;
}

// (decay, increment) pairs of h <- a h + b, composed in position order: (a1, b1) then (a2, b2) is
// (a1 a2, a2 b1 + b2). Inclusive scan over the lanes of a warp.
XSCAN_DEVICE void warp_scan(float& a, float& b, int lane) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset <<= 1) {
    const float a_up = __shfl_up_sync(kFullMask, a, offset), b_up = __shfl_up_sync(kFullMask, b, offset);
    if (lane >= offset) {
      b = a * b_up + b;
      a = a * a_up;
    }
  }
}

// The same in reverse position order, for the adjoint: q_out = a q_in + b, the lanes above first.
XSCAN_DEVICE void warp_reverse_scan(float& a, float& b, int lane) {
#pragma unroll
  for (int offset = 1; offset < kWarpSize; offset <<= 1) {
    const float a_down = __shfl_down_sync(kFullMask, a, offset), b_down = __shfl_down_sync(kFullMask, b, offset);
    if (lane + offset < kWarpSize) {
      b = a * b_down + b;
      a = a * a_down;
    }
  }
}

// Sum over the 32 lanes of a warp; every lane gets it.
XSCAN_DEVICE float warp_sum(float x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

// The launch grid: x = (batch b, channel tile), tiles fastest (x takes 2^31 - 1 blocks, y and z
// only 65,535); y = route k; z = span of a split sequence.
struct GridSize {
  unsigned x, y, z;
};
inline GridSize scan_grid_size(const ScanParams& P) {
  return {static_cast<unsigned>(channel_tiles(P)) * static_cast<unsigned>(P.batch), static_cast<unsigned>(P.routes),
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

// The thread's place in the launch.
struct Lane {
  int b, k, tile, d, group_B, group_C;
  int tile_group_B, tile_group_C;  // the B and C groups of the whole tile (a tile never straddles one)
  int slot;                        // the block's channel this warp scans, 0 .. 4 / W - 1
  int part;                        // which of the channel's W warps, in position order
  int warp, lane;
  int64_t seq;     // (b, k, d): row of the per-sequence buffers
  int64_t param;   // (k, d): row of A, D, delta_bias
  bool active;     // false past the tile's last channel: the warp computes on channel 0 and writes nothing
  int live_slots;  // the tile's channels (the slots before the first inactive one)
};

XSCAN_DEVICE Lane lane_of(const ScanParams& P) {
  Lane l;
  const int tiles = channel_tiles(P);
  l.tile = blockIdx.x % tiles;
  l.b = blockIdx.x / tiles;
  l.k = blockIdx.y;
  l.warp = threadIdx.x / kWarpSize;
  l.lane = threadIdx.x % kWarpSize;
  l.slot = l.warp / P.warps_per_channel;
  l.part = l.warp % P.warps_per_channel;
  const int group_tile = l.tile / P.tiles_per_group;
  const int in_group = (l.tile % P.tiles_per_group) * channels_per_tile(P) + l.slot;
  const int channels_per_group_tile = P.channels / P.group_tiles;
  l.active = in_group < channels_per_group_tile;
  l.live_slots = channels_per_group_tile - (in_group - l.slot);
  if (l.live_slots > channels_per_tile(P)) l.live_slots = channels_per_tile(P);
  l.d = l.active ? group_tile * channels_per_group_tile + in_group : 0;
  l.group_B = l.d / (P.channels / P.groups_B);
  l.group_C = l.d / (P.channels / P.groups_C);
  l.tile_group_B = group_tile / (P.group_tiles / P.groups_B);
  l.tile_group_C = group_tile / (P.group_tiles / P.groups_C);
  l.seq = (static_cast<int64_t>(l.b) * P.routes + l.k) * P.channels + l.d;
  l.param = static_cast<int64_t>(l.k) * P.channels + l.d;
  return l;
}

// The sequence's row in the per-span buffers.
XSCAN_DEVICE int64_t span_row(const ScanParams& P, const Lane& l, const Span& span) {
  return l.seq * P.segments + span.index;
}

// kCount consecutive values, moved as aligned vectors of up to 16 bytes: tokens of one row of B or
// C, a lane's terms of dB or dC in shared memory (VectorRun: kItems of them).
template <typename T, int kCount>
struct alignas(sizeof(T) * kCount < 16 ? sizeof(T) * kCount : 16) Vector {
  T v[kCount];
};
template <typename T>
using VectorRun = Vector<T, kItems>;

// A lane's kItems values to 16-byte aligned shared memory, as vectors.
XSCAN_DEVICE void store_run(float* at, const float (&values)[kItems]) {
  VectorRun<float> run;
#pragma unroll
  for (int i = 0; i < kItems; ++i) run.v[i] = values[i];
  *reinterpret_cast<VectorRun<float>*>(at) = run;
}

// A per-token tensor (B or C) seen from the lane's channel: its (b, k, group) row in each modality.
// A position's element of state n is row[m] + n stride_n + e stride_t, the last term kept per
// position in 32 bits (the launcher keeps (T - 1) stride_t below 2^31). Routes: the policy (its
// token modalities: with one, row[1] is never used; its positions per token).
template <typename T, typename Routes>
struct StateRows {
  static constexpr bool kTwo = Routes::kTokenModalities == 2;
  static constexpr int kPerToken = Routes::kPositionsPerToken;
  const T* row[2];
  int64_t stride_n;
  int32_t stride_t;

  XSCAN_DEVICE StateRows(const TokenTensor& t, const Lane& l, int group)
      : stride_n(t.stride_n), stride_t(static_cast<int32_t>(t.stride_t)) {
    for (int m = 0; m < 2; ++m)
      row[m] = static_cast<const T*>(t.data[m]) + l.b * t.stride_b + l.k * t.stride_k + group * t.stride_c;
  }
  XSCAN_DEVICE uint32_t offset(int32_t e) const { return static_cast<uint32_t>(e * stride_t); }
  // A lane's positions' offsets are kept one per token: a lane's first position starts a token and
  // a token's kPerToken positions are consecutive (CrossPairRoutes: position p reads token p / 2),
  // so position i's offset is offsets[i / kPerToken]. note() sets it at the token's first position.
  template <int kTokens>
  XSCAN_DEVICE void note(uint32_t (&offsets)[kTokens], int i, int32_t e) const {
    if (i % kPerToken == 0) offsets[i / kPerToken] = offset(e);
  }

  // The rows of one state, from state 0 on (next() steps to the following state: a loop-carried
  // pointer, which keeps each load one multiply-add of its 32-bit offset); at(m, offset) is a
  // position's value.
  struct State {
    const T* row[2];
    int64_t stride_n;
    XSCAN_DEVICE const T* first_of(int m) const { return kTwo && m ? row[1] : row[0]; }
    XSCAN_DEVICE float at(int m, uint32_t offset) const { return to_float(first_of(m)[offset]); }
    // The modality of a lane's i-th position: m[i], or where the positions alternate the
    // modalities, i % 2 (a lane's first position is even; past the span's end, where m[i] is 0,
    // either row's value is ignored).
    template <int kCount>
    XSCAN_DEVICE static int modality(const int (&m)[kCount], int i) {
      return kPerToken == 2 ? i % 2 : m[i];
    }
    // The values at a lane's kCount positions (m: each position's modality; offset: each token's,
    // as note() keeps them):
    // where the launch reads token runs (`step`, the route's token_step where ScanParams::token_runs
    // allows, else 0), each run of kItems positions as kPerToken aligned vectors of kItems /
    // kPerToken tokens (one per modality where the positions alternate them), from the tokens of
    // the run's first positions on (step 1) or back (-1); else one load per position.
    template <int kCount>
    XSCAN_DEVICE void gather(int step, const int (&m)[kCount], const uint32_t (&offset)[kCount / kPerToken],
                             float (&out)[kCount]) const {
      constexpr int kTokens = kItems / kPerToken;
      using Run = Vector<T, kTokens>;
      if (step > 0) {
#pragma unroll
        for (int r = 0; r < kCount; r += kItems) {
#pragma unroll
          for (int q = 0; q < kPerToken; ++q) {
            const Run run = *reinterpret_cast<const Run*>(first_of(modality(m, r + q)) + offset[r / kPerToken]);
#pragma unroll
            for (int i = 0; i < kTokens; ++i) out[r + kPerToken * i + q] = to_float(run.v[i]);
          }
        }
      } else if (step < 0) {  // the run's last positions read its first tokens
#pragma unroll
        for (int r = 0; r < kCount; r += kItems) {
#pragma unroll
          for (int q = 0; q < kPerToken; ++q) {
            const Run run =
                *reinterpret_cast<const Run*>(first_of(modality(m, r + q)) + (offset[r / kPerToken] - (kTokens - 1)));
#pragma unroll
            for (int i = 0; i < kTokens; ++i) out[r + kPerToken * i + q] = to_float(run.v[kTokens - 1 - i]);
          }
        }
      } else {
#pragma unroll
        for (int i = 0; i < kCount; ++i) out[i] = at(modality(m, i), offset[i / kPerToken]);
      }
    }
    XSCAN_DEVICE void next() {
      row[0] += stride_n;
      if (kTwo) row[1] += stride_n;
    }
    // Back to state 0 after a loop over the N states: the forward keeps one State through its
    // chunks, so that no register holds state 0's rows through the state loop.
    XSCAN_DEVICE void rewind(int N) {
      row[0] -= N * stride_n;
      if (kTwo) row[1] -= N * stride_n;
    }
  };
  XSCAN_DEVICE State first_state() const { return State{{row[0], row[1]}, stride_n}; }
};

// The lane's route's token_step where the launch reads token runs (ScanParams::token_runs), else 0:
// StateRows::State::gather's `step`.
template <typename Routes>
XSCAN_DEVICE int token_run_step(const ScanParams& P, const Routes& routes, const Lane& l) {
  return Routes::kTokenRuns && P.token_runs ? routes.token_step(l.k) : 0;
}

// A strided tensor seen from one lane: at(m, c, r, w) is modality m's element at pixel (r, w) of
// channel c. base[m] holds the part of the offset fixed for the lane (batch, route, its channel d),
// so that a position adds only (c - d) stride_c + r stride_h + w stride_w: the first term is 0 for
// every route policy but the realigning ones (whose u is other channels), the second for per-token
// tensors (w is the token).
template <typename E>
struct LaneView {
  E* base[2];
  int32_t d;
  int64_t stride_c, stride_h, stride_w;
  XSCAN_DEVICE E& at(int m, int32_t c, int32_t r, int32_t w) const {
    // a select, not base[m]: a runtime index would put the view in local memory
    return (m ? base[1] : base[0])[(c - d) * stride_c + r * stride_h + w * stride_w];
  }
};

template <typename E>
XSCAN_DEVICE LaneView<E> lane_view(E* const data[2], int64_t fixed, const Lane& l, int64_t stride_c, int64_t stride_h,
                                   int64_t stride_w) {
  LaneView<E> v{{nullptr, nullptr}, l.d, stride_c, stride_h, stride_w};
  for (int m = 0; m < 2; ++m)
    if (data[m]) v.base[m] = data[m] + fixed + l.d * stride_c;
  return v;
}

// Every tensor a lane's positions read or write, in its own view.
template <typename T>
struct LaneViews {
  LaneView<const T> dt, u, z;
  LaneView<const float> dout;
  LaneView<float> y, du, ddelta, dz;
};

template <typename T>
XSCAN_DEVICE LaneView<const T> input_view(const void* const data[2], int64_t fixed, const Lane& l, int64_t stride_c,
                                          int64_t stride_h, int64_t stride_w) {
  const T* const typed[2] = {static_cast<const T*>(data[0]), static_cast<const T*>(data[1])};
  return lane_view<const T>(typed, fixed, l, stride_c, stride_h, stride_w);
}

template <typename T>
XSCAN_DEVICE LaneViews<T> lane_views(const ScanParams& P, const Lane& l) {
  const TokenTensor& dt = P.delta;
  const MapTensor &u = P.u, &z = P.z;
  const OutputMap &y = P.y, &du = P.du, &dout = P.dout;
  const float* const dout_data[2] = {dout.data[0], dout.data[1]};
  float* const dz[2] = {P.dz, nullptr};
  LaneViews<T> v;
  v.dt = input_view<T>(dt.data, l.b * dt.stride_b + l.k * dt.stride_k, l, dt.stride_c, 0, dt.stride_t);
  v.u = input_view<T>(u.data, l.b * u.stride_b, l, u.stride_c, u.stride_h, u.stride_w);
  v.z = input_view<T>(z.data, l.b * z.stride_b, l, z.stride_c, z.stride_h, z.stride_w);
  // one output gradient for every route
  v.dout = lane_view<const float>(dout_data, l.b * dout.stride_b, l, dout.stride_c, dout.stride_h, dout.stride_w);
  v.y = lane_view<float>(y.data, l.k * y.stride_k + l.b * y.stride_b, l, y.stride_c, y.stride_h, y.stride_w);
  v.du = lane_view<float>(du.data, l.k * du.stride_k + l.b * du.stride_b, l, du.stride_c, du.stride_h, du.stride_w);
  v.ddelta = lane_view<float>(P.ddelta, l.b * P.ddelta_stride_b + l.k * P.ddelta_stride_k, l, P.ddelta_stride_c, 0,
                              P.ddelta_stride_t);
  v.dz = lane_view<float>(dz, l.b * P.dz_stride_b, l, P.dz_stride_c, P.dz_stride_h, P.dz_stride_w);
  return v;
}

// A write of one route's output (or input gradient): plain, or added into a zeroed sum over routes.
XSCAN_DEVICE void store(bool atomic, float* at, float value) {
  if (atomic) {
    atomicAdd(at, value);
  } else {
    *at = value;
  }
}

// One position of a lane's run: the token it reads and the pixels it reads and writes.
struct Position {
  TokenOf<int32_t> t;
  int token_m;  // the token's modality before the channel's source (the row of dt, B, C it reads)
  bool valid;   // inside the span (else it is the identity step: decay 1, increment 0)
};

template <typename Routes>
XSCAN_DEVICE Position locate(const Routes& routes, const Lane& l, int32_t p, int32_t end) {
  Position s;
  s.valid = p < end;
  s.t = routes.at(l.k, s.valid ? p : 0);
  s.token_m = s.t.m;
  routes.source(l.d, s.t);
  return s;
}

// delta + delta_bias at the position, before softplus (0 past the span).
template <typename T>
XSCAN_DEVICE float load_delta(const LaneViews<T>& v, const Position& s, float bias) {
  return s.valid ? to_float(v.dt.at(s.token_m, v.dt.d, 0, s.t.e)) + bias : 0.f;
}

XSCAN_DEVICE float step_of(const ScanParams& P, const Position& s, float delta_raw) {
  return !s.valid ? 0.f : P.delta_softplus ? softplus(delta_raw) : delta_raw;
}

// u at the position (0 at padding and past the span).
template <typename T>
XSCAN_DEVICE float load_u(const LaneViews<T>& v, const Position& s) {
  return s.valid && !s.t.pad ? to_float(v.u.at(s.t.m, s.t.uc, s.t.ur, s.t.uw)) : 0.f;
}

// The gradient of the position's output (0 at padding, which has no output, and past the span).
template <typename T>
XSCAN_DEVICE float load_dout(const LaneViews<T>& v, const Position& s) {
  return s.valid && !s.t.pad ? v.dout.at(s.t.m, s.t.yc, s.t.yr, s.t.yw) : 0.f;
}

// z at the position's pixel of u (selective_scan only; 0 when there is no z).
template <typename T>
XSCAN_DEVICE float load_gate(const ScanParams& P, const LaneViews<T>& v, const Position& s) {
  return P.z.data[0] && s.valid ? to_float(v.z.at(0, s.t.uc, s.t.ur, s.t.uw)) : 0.f;
}

// The shared memory of a block, in floats: per channel slot its carried state (forward) or adjoint
// (backward) of each state, and its channel's row of A; the warps' scan totals per state parity (W > 1); the backward's
// dA per warp and its dB, dC contributions per state parity (one row of a chunk's positions per slot). The slot's row
// of A (read once per state), copied by its channel's first warp: every warp of the block reads it after the block's
// next barrier.
XSCAN_DEVICE const float* slot_A(const ScanParams& P, const Lane& l, float* rows) {
  const int N = P.dstate;
  float* row = rows + l.slot * N;
  if (l.part == 0)
    for (int n = l.lane; n < N; n += kWarpSize) row[n] = P.A[l.param * N + n];
  return row;
}

// The state entering a warp's positions (W > 1): the chunk's start state h0 through the totals of
// the channel's warps before it (forward), or the adjoint entering from after the chunk through the
// totals of the warps after it (reverse). Every warp of the block calls it (one barrier).
XSCAN_DEVICE float enter_warp(const ScanParams& P, const Lane& l, float* totals, int parity, float a, float b,
                              float entering, bool reverse) {
  if (P.warps_per_channel == 1) return entering;
  float* mine = totals + (parity * kWarps + l.warp) * 2;
  if (l.lane == (reverse ? 0 : kWarpSize - 1)) mine[0] = a, mine[1] = b;
  __syncthreads();
  const int first = l.slot * P.warps_per_channel;
  float h = entering;
#pragma unroll 1
  for (int i = 0; i < P.warps_per_channel - 1; ++i) {
    const int part = reverse ? P.warps_per_channel - 1 - i : i;
    if (reverse ? part <= l.part : part >= l.part) break;
    const float* other = totals + (parity * kWarps + first + part) * 2;
    h = other[0] * h + other[1];
  }
  return h;
}

// The state entering this lane's run of positions (reverse: the adjoint entering it from after):
// `entering` (the chunk's start state, or the adjoint entering the chunk from after it) through the
// channel's warps before this one (after it) and the lanes before (after) it in its warp. fold_a,
// fold_b: the lane's run as one step. Every warp of the block calls it (enter_warp's barrier).
XSCAN_DEVICE float enter_lane(const ScanParams& P, const Lane& l, float* totals, int parity, float fold_a, float fold_b,
                              float entering, bool reverse) {
  float a = fold_a, b = fold_b;
  if (reverse) {
    warp_reverse_scan(a, b, l.lane);
  } else {
    warp_scan(a, b, l.lane);
  }
  // the lanes before (after) this one as one step: the inclusive scan of the neighbouring lane
  float prior_a = reverse ? __shfl_down_sync(kFullMask, a, 1) : __shfl_up_sync(kFullMask, a, 1);
  float prior_b = reverse ? __shfl_down_sync(kFullMask, b, 1) : __shfl_up_sync(kFullMask, b, 1);
  if (l.lane == (reverse ? kWarpSize - 1 : 0)) prior_a = 1.f, prior_b = 0.f;
  return prior_a * enter_warp(P, l, totals, parity, a, b, entering, reverse) + prior_b;
}

// The sum over a channel's positions of each lane's share x, for the channel's first warp: the
// warps' sums added in position order. Every warp of the block calls it (one barrier; `totals` is
// free after the chunk loop's last barrier).
XSCAN_DEVICE float channel_sum(const ScanParams& P, const Lane& l, float* totals, float x) {
  x = warp_sum(x);
  if (l.lane == 0) totals[l.warp] = x;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < P.warps_per_channel; ++w) total += totals[l.warp + w];
  return total;
}

// The first position of the span's last chunk (chunks are whole from the span's start).
XSCAN_DEVICE int32_t last_chunk_of(const ScanParams& P, const Span& span) {
  return span.first + (span.end - 1 - span.first) / P.chunk_length * P.chunk_length;
}

// The forward over the block's span; also the state-saving rerun of the backward (chunk_states set,
// no y) and a split sequence's summary pass (span_summary: no outputs but each span's end state and
// summed dt).
template <typename T, typename Routes, int I>
XSCAN_KERNEL(kForwardBlocksPerSM<I>)
scan_forward_kernel(const ScanParams P, const Routes routes) {
  float* shared = dynamic_shared();
  const SharedLayout layout = shared_layout(P, false);
  const Lane l = lane_of(P);
  const LaneViews<T> v = lane_views<T>(P, l);
  const Span span = span_of(P);
  const int N = P.dstate;
  float* carry = shared + layout.carry + l.slot * N;
  float* totals = shared + layout.totals;
  // the span's start state: 0, or for a span of a split sequence its carried state
  const bool carried = P.segments > 1 && !P.span_summary;
  if (l.part == 0)
    for (int n = l.lane; n < N; n += kWarpSize) carry[n] = carried ? P.span_states[span_row(P, l, span) * N + n] : 0.f;
  const float bias = P.delta_bias ? P.delta_bias[l.param] : 0.f;
  const float skip = P.D ? P.D[l.param] : 0.f;
  const StateRows<T, Routes> Brows(P.B, l, l.group_B), Crows(P.C, l, l.group_C);
  const int step = token_run_step(P, routes, l);
  const float* A = slot_A(P, l, shared + layout.A);
  const bool outputs = P.y.data[0] != nullptr;
  float dt_sum = 0.f;  // the summary pass's: the span's decay is exp(A dt_sum)
  __syncthreads();

  // The forward's chunks are R of the backward's (I = R kItems positions per lane, R = 1 or 2): the
  // chunk start states to save (one per backward chunk), from the span's first on; with R = 2 the
  // second of each forward chunk is the state after the lane whose run ends half way (`middle`).
  static_assert(I == kItems || I == 2 * kItems, "a forward lane holds one or two runs of kItems");
  constexpr int R = I / kItems;
  const int32_t chunk_length = R * P.chunk_length;
  const bool middle = R == 2 && (l.part * kWarpSize + l.lane + 1) * I == P.chunk_length;
  float* saved = P.chunk_states ? P.chunk_states + (l.seq * P.chunks + span.first / P.chunk_length) * N : nullptr;
  auto Bn = Brows.first_state(), Cn = Crows.first_state();
  for (int32_t chunk = span.first; chunk < span.end; chunk += chunk_length, saved += saved ? R * N : 0) {
    const int32_t first = chunk + (l.part * kWarpSize + l.lane) * I;
    const bool save_middle = saved && middle && l.active && chunk + P.chunk_length < span.end;  // at saved + N
    float dt[I], dtu[I], y[I];  // y: D u, then + C.h state by state
    float run_dt = 0.f;         // the run's summed dt
    uint32_t at_B[I / Routes::kPositionsPerToken], at_C[I / Routes::kPositionsPerToken];
    int m[I];
#pragma unroll
    for (int i = 0; i < I; ++i) {
      const Position s = locate(routes, l, first + i, span.end);
      const float u = load_u(v, s);
      dt[i] = step_of(P, s, load_delta(v, s, bias));
      dtu[i] = dt[i] * u;
      y[i] = skip * u;
      m[i] = s.token_m;
      Brows.note(at_B, i, s.t.e);
      Crows.note(at_C, i, s.t.e);
      run_dt += dt[i];
    }
    run_dt = computed_once(run_dt);
    dt_sum += run_dt;
    if (saved && l.part == 0 && l.active) {
#pragma unroll 1
      for (int n = l.lane; n < N; n += kWarpSize) saved[n] = carry[n];
    }
#pragma unroll 1
    for (int n = 0; n < N; ++n, Bn.next(), Cn.next()) {
      const float A_log2 = A[n] * kLog2e;
      float a[I], b[I], Bv[I], Cv[I];
      Bn.gather(step, m, at_B, Bv);
      if (outputs) Cn.gather(step, m, at_C, Cv);
      // this lane's positions as one step: (decay of the run's summed dt, its increment)
      const float fold_a = decay_of(run_dt, A_log2);
      float fold_b = 0.f;
#pragma unroll
      for (int i = 0; i < I; ++i) {
        a[i] = decay_of(dt[i], A_log2);
        b[i] = dtu[i] * Bv[i];
        fold_b = a[i] * fold_b + b[i];
      }
      float h = enter_lane(P, l, totals, n & 1, fold_a, fold_b, carry[n], false);
      if (outputs) {
#pragma unroll
        for (int i = 0; i < I; ++i) {
          h = a[i] * h + b[i];
          y[i] += Cv[i] * h;
        }
      } else {
#pragma unroll
        for (int i = 0; i < I; ++i) h = a[i] * h + b[i];
      }
      if (save_middle) saved[N + n] = h;
      __syncwarp();
      if (l.part == P.warps_per_channel - 1 && l.lane == kWarpSize - 1) carry[n] = h;
    }
    Bn.rewind(N), Cn.rewind(N);
    if (outputs && l.active) {
#pragma unroll
      for (int i = 0; i < I; ++i) {
        const Position s = locate(routes, l, first + i, span.end);
        if (!s.valid || s.t.pad) continue;
        float out = y[i];
        if (P.z.data[0]) out *= silu(load_gate(P, v, s));
        store(P.atomic_routes, &v.y.at(s.t.m, s.t.yc, s.t.yr, s.t.yw), out);
      }
    }
    __syncthreads();  // the carry is written; the next chunk reads it
  }
  if (P.span_summary) {
    const float span_dt = channel_sum(P, l, totals, dt_sum);
    if (l.part == 0 && l.active) {
      const int64_t row = span_row(P, l, span);
      for (int n = l.lane; n < N; n += kWarpSize) P.span_states[row * N + n] = carry[n];
      if (l.lane == 0) P.span_dt[row] = span_dt;
    }
  }
  if (P.last_state && l.active && l.part == 0 && span.index == P.segments - 1)
    for (int n = l.lane; n < N; n += kWarpSize) P.last_state[l.seq * N + n] = carry[n];
}

// The summary of a split sequence's spans for the backward: the adjoint each span passes to the
// state before it when nothing enters it from its successors (linear in what enters: the span's
// decay exp(A span_dt) times that, plus this), and the span's summed dt (so that the backward needs
// nothing of the forward's summary pass when the forward saved its states).
template <typename T, typename Routes>
XSCAN_KERNEL(kBackwardBlocksPerSM)
span_adjoint_kernel(const ScanParams P, const Routes routes) {
  float* shared = dynamic_shared();
  const SharedLayout layout = shared_layout(P, false);
  const Lane l = lane_of(P);
  const LaneViews<T> v = lane_views<T>(P, l);
  const Span span = span_of(P);
  const int N = P.dstate;
  float* carry = shared + layout.carry + l.slot * N;
  float* totals = shared + layout.totals;
  if (l.part == 0)
    for (int n = l.lane; n < N; n += kWarpSize) carry[n] = 0.f;
  const float bias = P.delta_bias ? P.delta_bias[l.param] : 0.f;
  const StateRows<T, Routes> Crows(P.C, l, l.group_C);
  const int step = token_run_step(P, routes, l);
  const float* A = slot_A(P, l, shared + layout.A);
  float dt_sum = 0.f;
  __syncthreads();
  for (int32_t chunk = last_chunk_of(P, span); chunk >= span.first; chunk -= P.chunk_length) {
    const int32_t first = chunk + (l.part * kWarpSize + l.lane) * kItems;
    float dt[kItems], dy[kItems], run_dt = 0.f;
    uint32_t at_C[kItems / Routes::kPositionsPerToken];
    int m[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const Position s = locate(routes, l, first + i, span.end);
      const float dout = load_dout(v, s);
      dt[i] = step_of(P, s, load_delta(v, s, bias));
      run_dt += dt[i];
      dy[i] = P.z.data[0] ? dout * silu(load_gate(P, v, s)) : dout;
      m[i] = s.token_m;
      Crows.note(at_C, i, s.t.e);
    }
    run_dt = computed_once(run_dt);
    dt_sum += run_dt;
    auto Cn = Crows.first_state();
#pragma unroll 1
    for (int n = 0; n < N; ++n, Cn.next()) {
      const float A_log2 = A[n] * kLog2e;
      float Cv[kItems];
      Cn.gather(step, m, at_C, Cv);
      float fold_a = decay_of(run_dt, A_log2), fold_b = 0.f;
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i) fold_b = decay_of(dt[i], A_log2) * (Cv[i] * dy[i] + fold_b);
      const float q_after = carry[n];
      warp_reverse_scan(fold_a, fold_b, l.lane);
      const float entering = enter_warp(P, l, totals, n & 1, fold_a, fold_b, q_after, true);
      __syncwarp();
      if (l.part == 0 && l.lane == 0) carry[n] = fold_a * entering + fold_b;
    }
    __syncthreads();
  }
  const float span_dt = channel_sum(P, l, totals, dt_sum);
  if (l.part == 0 && l.active) {
    const int64_t row = span_row(P, l, span);
    for (int n = l.lane; n < N; n += kWarpSize) P.span_adjoints[row * N + n] = carry[n];
    if (l.lane == 0) P.span_dt[row] = span_dt;
  }
}

// The carry over a split sequence's spans, one thread per (sequence, state), grid
// (ceil(K Dm / threads), N, Bt): turns each span's summary (span_states, or span_adjoints when
// kReverse) into what enters the span: h <- exp(A span_dt) h + summary, from the first span with
// h = 0, or from the last with the gradient of the last state.
template <bool kReverse>
XSCAN_KERNEL(kBackwardBlocksPerSM)
span_carry_kernel(const ScanParams P) {
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

// One state's dB and dC rows of a block of kSlots channels (live of them: a tile's last may hold
// fewer): its threads over consecutive positions of the chunk, each summing the channels' terms
// (rows[B or C][slot][position], partial_place) in slot order and storing the sums at the
// positions' columns.
template <int kSlots>
XSCAN_DEVICE void sum_row(const float* rows, int row_floats, int live, const uint32_t* tokens, int chunk_end,
                          bool atomic, float* dB_row, float* dC_row) {
  const float* sum_B = rows + partial_place(threadIdx.x);
#pragma unroll 1
  for (int p = threadIdx.x; p < chunk_end; p += kThreadsPerBlock, sum_B += partial_place(kThreadsPerBlock)) {
    const float* sum_C = sum_B + kSlots * row_floats;
    float total_B = sum_B[0], total_C = sum_C[0];
#pragma unroll
    for (int c = 1; c < kSlots; ++c) {
      if (c < live) total_B += sum_B[c * row_floats], total_C += sum_C[c * row_floats];
    }
    store(atomic, dB_row + tokens[p], total_B);
    store(atomic, dC_row + tokens[p], total_C);
  }
}

// The backward over the block's span (from the chunk start states a forward saved).
template <typename T, typename Routes>
XSCAN_KERNEL(kBackwardBlocksPerSM)
scan_backward_kernel(const ScanParams P, const Routes routes) {
  float* shared = dynamic_shared();
  const SharedLayout layout = shared_layout(P, true);
  const Lane l = lane_of(P);
  const LaneViews<T> v = lane_views<T>(P, l);
  const Span span = span_of(P);
  const int N = P.dstate;
  const int slots = channels_per_tile(P), row_floats = partial_row(P);
  float* carry = shared + layout.carry + l.slot * N;  // the adjoint entering the chunk from after it
  float* totals = shared + layout.totals;
  float* dA_sums = shared + layout.dA + l.warp * N;
  float* partials = shared + layout.partials;                              // [parity][B or C][slot][chunk position]
  uint32_t* tokens = reinterpret_cast<uint32_t*>(shared + layout.tokens);  // per chunk position: its column
  // dLoss/dh at the span's end: dLoss/dlast_state, or for a span of a split sequence what its
  // successors pass it (carried)
  const float* entering = P.segments > 1  ? P.span_adjoints + span_row(P, l, span) * N
                          : P.dlast_state ? P.dlast_state + l.seq * N
                                          : nullptr;
  if (l.part == 0)
    for (int n = l.lane; n < N; n += kWarpSize) carry[n] = entering ? entering[n] : 0.f;
  if (l.lane == 0)
    for (int n = 0; n < N; ++n) dA_sums[n] = 0.f;
  const float bias = P.delta_bias ? P.delta_bias[l.param] : 0.f;
  const float skip = P.D ? P.D[l.param] : 0.f;
  const StateRows<T, Routes> Brows(P.B, l, l.group_B), Crows(P.C, l, l.group_C);
  const int step = token_run_step(P, routes, l);
  const float* A = slot_A(P, l, shared + layout.A);
  const bool gated = P.z.data[0] != nullptr;
  const int64_t row = static_cast<int64_t>(l.b) * P.routes + l.k;
  const int64_t per_state = static_cast<int64_t>(P.modalities) * P.tokens;
  // state 0's row of dB (Bt, K, G_B, N, M*T) and dC (Bt, K, G_C, N, M*T) for atomics, or of this
  // tile's partials (Bt, K, tiles, N, M*T); the tile's groups, also for a warp past its last channel
  const bool atomic = P.atomic_state_grads;
  float* const dB_first =
      P.dB_part + (row * (atomic ? P.groups_B : channel_tiles(P)) + (atomic ? l.tile_group_B : l.tile)) * N * per_state;
  float* const dC_first =
      P.dC_part + (row * (atomic ? P.groups_C : channel_tiles(P)) + (atomic ? l.tile_group_C : l.tile)) * N * per_state;
  float dskip = 0.f, dbias = 0.f;
  __syncthreads();

  // the saved start state of each chunk, from the span's last chunk back
  const float* saved = P.chunk_states + (l.seq * P.chunks + last_chunk_of(P, span) / P.chunk_length) * N;
  for (int32_t chunk = last_chunk_of(P, span); chunk >= span.first; chunk -= P.chunk_length, saved -= N) {
    const int32_t first = chunk + (l.part * kWarpSize + l.lane) * kItems;
    const int run = (l.part * kWarpSize + l.lane) * kItems;  // this lane's first position in the chunk
    const int chunk_end = span.end - chunk < P.chunk_length ? span.end - chunk : P.chunk_length;  // in the span
    float dt[kItems], dtu[kItems], dy[kItems], run_dt = 0.f;
    float grad_B[kItems], grad_A[kItems], readout[kItems];  // sums over states: adjoint B, adjoint A a h_prev, C h
    uint32_t at_B[kItems / Routes::kPositionsPerToken], at_C[kItems / Routes::kPositionsPerToken];
    int m[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const Position s = locate(routes, l, first + i, span.end);
      const float dout = load_dout(v, s);
      dt[i] = step_of(P, s, load_delta(v, s, bias));
      dtu[i] = dt[i] * load_u(v, s);
      run_dt += dt[i];
      dy[i] = gated ? dout * silu(load_gate(P, v, s)) : dout;
      m[i] = s.token_m;
      Brows.note(at_B, i, s.t.e);
      Crows.note(at_C, i, s.t.e);
      if (l.slot == 0) tokens[run + i] = s.token_m * P.tokens + s.t.e;  // the same for every slot
      grad_B[i] = grad_A[i] = readout[i] = 0.f;
    }
    auto Bn = Brows.first_state(), Cn = Crows.first_state();
    float *dB_row = dB_first, *dC_row = dC_first;
#pragma unroll 1
    for (int n = 0; n < N; ++n, Bn.next(), Cn.next(), dB_row += per_state, dC_row += per_state) {
      const float A_n = A[n], A_log2 = A_n * kLog2e;
      float a[kItems], Bv[kItems], Cv[kItems];
      Bn.gather(step, m, at_B, Bv);
      Cn.gather(step, m, at_C, Cv);
      const float fold_a = decay_of(run_dt, A_log2);  // the run's decay, either way
      float fold_b = 0.f;
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        a[i] = decay_of(dt[i], A_log2);
        fold_b = a[i] * fold_b + dtu[i] * Bv[i];
      }
      // the states, from the chunk's saved start state
      float h_prev[kItems];  // the state before each position; after it: h_prev[i + 1], or h_last
      float h_last = enter_lane(P, l, totals, 0, fold_a, fold_b, saved[n], false);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        h_prev[i] = h_last;
        h_last = a[i] * h_last + dtu[i] * Bv[i];
      }
      // the adjoints: q_t = a_t (C_t dy_t + q_{t+1}) from the adjoint entering the chunk
      float rfold_b = 0.f;
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i) rfold_b = a[i] * (Cv[i] * dy[i] + rfold_b);
      float q = enter_lane(P, l, totals, 1, fold_a, rfold_b, carry[n], true);
      float dA = 0.f;
      float contribution_B[kItems], contribution_C[kItems];  // this channel's terms of dB, dC
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i) {
        const float h = i + 1 < kItems ? h_prev[i + 1 < kItems ? i + 1 : i] : h_last;
        const float g = Cv[i] * dy[i] + q;  // dLoss/dh at this position
        const float g_decayed = g * a[i] * h_prev[i];
        grad_B[i] += g * Bv[i];
        grad_A[i] += A_n * g_decayed;
        dA += dt[i] * g_decayed;
        readout[i] += Cv[i] * h;
        contribution_B[i] = g * dtu[i];  // an inactive slot's are not summed
        contribution_C[i] = dy[i] * h;
        q = a[i] * g;
      }
      dA = warp_sum(dA);
      __syncwarp();
      if (l.lane == 0) dA_sums[n] += dA;
      if (l.part == 0 && l.lane == 0) carry[n] = q;
      if (slots == 1) {  // a block of one channel (4 warps): its terms are the sums
        const VectorRun<uint32_t> columns = *reinterpret_cast<const VectorRun<uint32_t>*>(tokens + run);
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          if (run + i >= chunk_end) break;
          store(atomic, dB_row + columns.v[i], contribution_B[i]);
          store(atomic, dC_row + columns.v[i], contribution_C[i]);
        }
        continue;
      }
      float* parity_rows = partials + (n & 1) * 2 * slots * row_floats;  // this state's rows
      store_run(parity_rows + l.slot * row_floats + partial_place(run), contribution_B);
      store_run(parity_rows + (slots + l.slot) * row_floats + partial_place(run), contribution_C);
      // dB, dC of this state: the tile's channels summed in slot order, the block's threads over
      // consecutive positions of the chunk
      __syncthreads();
      if (slots == 2) {
        sum_row<2>(parity_rows, row_floats, l.live_slots, tokens, chunk_end, atomic, dB_row, dC_row);
      } else {
        sum_row<kWarps>(parity_rows, row_floats, l.live_slots, tokens, chunk_end, atomic, dB_row, dC_row);
      }
    }
    // this chunk's per-position gradients
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const Position s = locate(routes, l, first + i, span.end);
      if (!s.valid) continue;
      const float delta_raw = load_delta(v, s, bias), u = load_u(v, s);
      if (gated && l.active) {  // selective_scan only: y = (C.h + D u) * silu(z)
        const float dout = load_dout(v, s);
        v.dz.at(0, s.t.uc, s.t.ur, s.t.uw) = dout * (readout[i] + skip * u) * silu_grad(load_gate(P, v, s));
      }
      const float du = dt[i] * grad_B[i] + skip * dy[i];
      const float ddt = grad_B[i] * u + grad_A[i];
      const float ddelta = P.delta_softplus ? ddt * softplus_grad(delta_raw) : ddt;
      dskip += dy[i] * u;
      dbias += ddelta;
      if (l.active) {
        if (!s.t.pad) store(P.atomic_routes, &v.du.at(s.t.m, s.t.uc, s.t.ur, s.t.uw), du);
        v.ddelta.at(s.t.m, l.d, 0, s.t.e) = ddelta;
      }
    }
    __syncthreads();  // the carried adjoints are written; the next chunk reads them
  }
  // dA, dD, delta_bias's gradient: the channel's warps summed in order
  dskip = warp_sum(dskip);
  dbias = warp_sum(dbias);
  float* sums = totals;  // free after the last barrier
  if (l.lane == 0) sums[l.warp * 2] = dskip, sums[l.warp * 2 + 1] = dbias;
  __syncthreads();
  if (l.part == 0 && l.active) {
    const int64_t part = P.segments > 1 ? span_row(P, l, span) : l.seq;  // this block's partials' row
    for (int n = l.lane; n < N; n += kWarpSize) {
      float total = 0.f;
      for (int w = 0; w < P.warps_per_channel; ++w) total += dA_sums[w * N + n];
      P.dA_part[part * N + n] = total;
    }
    if (l.lane == 0) {
      float total_skip = 0.f, total_bias = 0.f;
      for (int w = 0; w < P.warps_per_channel; ++w)
        total_skip += sums[(l.warp + w) * 2], total_bias += sums[(l.warp + w) * 2 + 1];
      if (P.dD_part) P.dD_part[part] = total_skip;
      if (P.ddelta_bias_part) P.ddelta_bias_part[part] = total_bias;
    }
  }
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
