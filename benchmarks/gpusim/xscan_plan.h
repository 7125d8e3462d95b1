// Everything xscan-specific about filling ScanParams for the three ops the harness runs, in one
// place: the C++ mirror of xscan/backends/cuda.py (_Launch, tiling, sequence_split, forward,
// backward) for selective_scan (Route LINE), cross_ss2d (Route CROSS_PAIR) and ss2d (Route CROSS),
// with atomic sums (torch's default, non-deterministic mode: atomic_routes where routes share a
// pixel, atomic_state_grads).
//
// When the kernels' layout fields change, only plan_layout() / describe_layout() below follow.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "scan_params.h"

// The harness's problem, one layout for both ops (device pointers, fp32, contiguous):
//   u, y, du, dout: (M, Bt, Dm, T)     z, dz: (Bt, Dm, T)       dt, ddt: (M, Bt, K, Dm, T)
//   B, C, dB, dC: (Bt, K, N, M*T)      A, dA: (K, Dm, N)        D, bias, dD, dbias: (K, Dm)
// selective_scan: M = 1, K = 1, H = 1, W = T = L (mamba's own layouts). cross_ss2d: M = 2, K = 4,
// T = H*W, spatial order (xscan.cross_ss2d's arguments, B_m = B[..., m*T:(m+1)*T]); ss2d: the same
// with M = 1.
struct Problem {
  int op = 0;  // 0 selective_scan, 1 cross_ss2d, 2 ss2d
  int Bt = 1, K = 1, Dm = 1, N = 16, H = 1, W = 1, T = 1, M = 1;
  bool softplus = true, has_z = false;
  int64_t positions() const { return int64_t(M) * T; }  // route length
};

struct DeviceTensors {
  float *u = nullptr, *z = nullptr, *dt = nullptr, *B = nullptr, *C = nullptr, *A = nullptr, *D = nullptr,
        *bias = nullptr;
  float* y = nullptr;                                                                // forward output
  float* dout = nullptr;                                                             // backward input
  float *du = nullptr, *dz = nullptr, *ddt = nullptr, *dB = nullptr, *dC = nullptr;  // backward outputs
};

// Scratch the kernels need besides the problem's tensors (allocated by xscan_params through `alloc(floats)`,
// which returns zeroed device memory).
struct XscanScratch {
  float *dA_part = nullptr, *dD_part = nullptr, *dbias_part = nullptr;
  int64_t partial_rows = 0;                        // Bt * K * Dm * segments
  float *dB_tiles = nullptr, *dC_tiles = nullptr;  // deterministic mode: (Bt, K, tiles, N, M*T)
  int64_t tiles = 0;
};

// The launch layout: the kernels' own plan_launch (csrc/cuda/scan_params.h) with
// xscan/backends/cuda.py's RESIDENT_BLOCKS, MIN_SPAN and MAX_WARPS, as its plan() does for a GPU of
// sm_count SMs; sm_count <= 0: one warp per channel, no sequence split.
inline void plan_layout(xscan::cuda::ScanParams& P, int sm_count) {
  constexpr int kResidentBlocks = 2, kMinSpan = 512, kMaxWarps = 4;
  xscan::cuda::plan_launch(P, sm_count > 0 ? int64_t(kResidentBlocks) * sm_count : 0, kMinSpan,
                           sm_count > 0 ? kMaxWarps : 1);
}

inline std::string describe_layout(const xscan::cuda::ScanParams& P) {
  return "warps_per_channel=" + std::to_string(P.warps_per_channel) +
         " chunk_length=" + std::to_string(P.chunk_length) +
         " tiles=" + std::to_string(P.group_tiles * P.tiles_per_group) + " segments=" + std::to_string(P.segments) +
         " span=" + std::to_string(P.span_length);
}

// The forward Pf saves the chunk start states the backward Pb starts from (what a forward run for
// training does); kernels older than ScanParams::states_saved always rerun the forward instead.
template <typename Params>
auto mark_states_saved(Params& Pf, Params& Pb, int) -> decltype(Pb.states_saved = true, void()) {
  Pf.chunk_states = Pb.chunk_states;
  Pb.states_saved = true;
}
template <typename Params>
void mark_states_saved(Params&, Params&, long) {}

// Fills P for a forward (backward = false) or a backward of `pb` over `t`. `sm_count` plans the
// sequence split (0: off). Allocates the scratch through `alloc`.
inline xscan::cuda::ScanParams xscan_params(const Problem& pb, const DeviceTensors& t, bool backward, int sm_count,
                                            const std::function<float*(size_t floats)>& alloc, XscanScratch* scratch,
                                            bool deterministic = false) {
  using namespace xscan::cuda;
  ScanParams P;
  const int64_t Bt = pb.Bt, K = pb.K, Dm = pb.Dm, N = pb.N, T = pb.T, M = pb.M;
  const bool on_map = pb.op != 0;
  P.route = pb.op == 1 ? 3 : pb.op == 2 ? 1 : 0;  // Route::kCrossPair, kCross, kLine
  P.source = 0;
  if (on_map) P.geometry[0] = pb.H, P.geometry[1] = pb.W;
  else P.geometry[0] = T;
  P.batch = pb.Bt, P.routes = pb.K, P.channels = pb.Dm, P.dstate = pb.N;
  P.length = int32_t(pb.positions()), P.tokens = int32_t(T), P.modalities = pb.M;
  P.groups_B = P.groups_C = 1;
  P.delta_softplus = pb.softplus;
  plan_layout(P, sm_count);

  // u, z: (Bt, Dm, H, W) maps (selective_scan: (Bt, Dm, 1, L)); modality m at u + m * Bt*Dm*T
  auto map = [&](MapTensor& mt, const float* base, int modalities) {
    for (int m = 0; m < 2; ++m) mt.data[m] = base + (m < modalities ? m : modalities - 1) * Bt * Dm * T;
    mt.stride_b = Dm * T, mt.stride_c = T, mt.stride_h = pb.W, mt.stride_w = 1;
  };
  map(P.u, t.u, pb.M);
  if (pb.has_z) map(P.z, t.z, 1), P.z.data[1] = nullptr;
  // dt: (Bt, K, Dm, T) per modality at dt + m * Bt*K*Dm*T
  for (int m = 0; m < 2; ++m) P.delta.data[m] = t.dt + (m < M ? m : 0) * Bt * K * Dm * T;
  P.delta.stride_b = K * Dm * T, P.delta.stride_k = Dm * T, P.delta.stride_c = T, P.delta.stride_t = 1;
  // B, C: (Bt, K, G=1, N, T) per modality, views of (Bt, K, N, M*T)
  auto tokens = [&](TokenTensor& tt, const float* base) {
    for (int m = 0; m < 2; ++m) tt.data[m] = base + (m < M ? m : 0) * T;
    tt.stride_b = K * N * M * T, tt.stride_k = N * M * T, tt.stride_c = N * M * T, tt.stride_n = M * T, tt.stride_t = 1;
  };
  tokens(P.B, t.B);
  tokens(P.C, t.C);
  P.A = t.A, P.D = t.D, P.delta_bias = t.bias;

  auto out_map = [&](OutputMap& o, float* base) {
    for (int m = 0; m < 2; ++m) o.data[m] = base + (m < M ? m : 0) * Bt * Dm * T;
    o.stride_k = 0, o.stride_b = Dm * T, o.stride_c = T, o.stride_h = pb.W, o.stride_w = 1;
  };
  // routes share pixels (cross_ss2d, ss2d): atomics into zeroed y / du (the harness zeroes them)
  const bool atomic = on_map;
  P.atomic_routes = atomic;
  if (P.segments > 1) {
    const size_t rows = size_t(Bt) * K * Dm * P.segments;
    P.span_states = alloc(rows * N);
    P.span_dt = alloc(rows);
    if (backward) P.span_adjoints = alloc(rows * N);
  }
  if (!backward) {
    out_map(P.y, t.y);
    return P;
  }
  P.chunk_states = alloc(size_t(Bt) * K * Dm * P.chunks * N);
  out_map(P.dout, t.dout);
  out_map(P.du, t.du);
  for (int m = 0; m < 2; ++m) P.ddelta[m] = t.ddt + (m < M ? m : 0) * Bt * K * Dm * T;
  P.ddelta_stride_b = K * Dm * T, P.ddelta_stride_k = Dm * T, P.ddelta_stride_c = T, P.ddelta_stride_t = 1;
  if (pb.has_z) {
    P.dz = t.dz;
    P.dz_stride_b = Dm * T, P.dz_stride_c = T, P.dz_stride_h = pb.W, P.dz_stride_w = 1;
  }
  P.atomic_state_grads = !deterministic;  // dB, dC straight into zeroed (Bt, K, G=1, N, M*T): the harness's layout
  P.dB_part = t.dB, P.dC_part = t.dC;
  if (deterministic) {  // per-tile partials (Bt, K, tiles, N, M*T), summed by xscan_sum_tiles
    scratch->tiles = int64_t(P.group_tiles) * P.tiles_per_group;
    P.dB_part = scratch->dB_tiles = alloc(size_t(Bt) * K * scratch->tiles * N * M * T);
    P.dC_part = scratch->dC_tiles = alloc(size_t(Bt) * K * scratch->tiles * N * M * T);
  }
  scratch->partial_rows = int64_t(Bt) * K * Dm * P.segments;
  scratch->dA_part = alloc(size_t(scratch->partial_rows) * N);
  scratch->dD_part = alloc(size_t(scratch->partial_rows));
  scratch->dbias_part = alloc(size_t(scratch->partial_rows));
  P.dA_part = scratch->dA_part, P.dD_part = scratch->dD_part, P.ddelta_bias_part = scratch->dbias_part;
  return P;
}

// The parameter gradients from the per-(b, k, d, span) partials (host copies): dA (K, Dm, N), dD, dbias (K, Dm).
inline void xscan_sum_partials(const Problem& pb, const xscan::cuda::ScanParams& P, const std::vector<float>& dA_part,
                               const std::vector<float>& dD_part, const std::vector<float>& dbias_part,
                               std::vector<double>& dA, std::vector<double>& dD, std::vector<double>& dbias) {
  const int64_t KD = int64_t(pb.K) * pb.Dm, S = P.segments, N = pb.N;
  dA.assign(KD * N, 0.0), dD.assign(KD, 0.0), dbias.assign(KD, 0.0);
  for (int64_t b = 0; b < pb.Bt; ++b)
    for (int64_t kd = 0; kd < KD; ++kd)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t row = (b * KD + kd) * S + s;
        for (int64_t n = 0; n < N; ++n) dA[kd * N + n] += dA_part[row * N + n];
        dD[kd] += dD_part[row];
        dbias[kd] += dbias_part[row];
      }
}

// Deterministic mode: dB or dC (Bt, K, 1, N, M*T) from the per-tile partials (host copies).
inline std::vector<float> xscan_sum_tiles(const Problem& pb, const XscanScratch& s, const std::vector<float>& part) {
  const int64_t per = int64_t(pb.N) * pb.M * pb.T, rows = int64_t(pb.Bt) * pb.K;
  std::vector<float> out(size_t(rows * per), 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t tile = 0; tile < s.tiles; ++tile)
      for (int64_t i = 0; i < per; ++i) out[r * per + i] += part[(r * s.tiles + tile) * per + i];
  return out;
}
