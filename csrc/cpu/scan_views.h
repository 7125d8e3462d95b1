// The CPU engine's views and scratch: strided views of one call's tensors (ScanViews), the channel
// blocks a work item covers (channel_block, backward_block) and one thread's Workspace. The engine
// (scan_engine.h) runs over them; scan_run.h splits a call into work items.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "xscan/routes.h"

namespace xscan {
namespace cpu {

constexpr int64_t kChunk = 64;  // steps per checkpointed chunk of the backward
// Positions the forward loads at a time: long runs of each channel's plane keep the hardware
// prefetchers streaming (64 gave ~30% stalls on the loads).
constexpr int64_t kForwardTile = 256;
static_assert(kForwardTile % kChunk == 0, "a forward tile holds whole chunks (their checkpoints)");

// A strided view of up to 5 dimensions (unused trailing strides are 0).
template <typename T>
struct Strided {
  T* data = nullptr;
  int64_t stride[5] = {0, 0, 0, 0, 0};

  T& operator()(int64_t i0, int64_t i1, int64_t i2, int64_t i3) const {
    return data[i0 * stride[0] + i1 * stride[1] + i2 * stride[2] + i3 * stride[3]];
  }
  T* at5(int64_t i0, int64_t i1, int64_t i2, int64_t i3, int64_t i4) const {
    return data + i0 * stride[0] + i1 * stride[1] + i2 * stride[2] + i3 * stride[3] + i4 * stride[4];
  }
  explicit operator bool() const { return data != nullptr; }
};

template <typename T>
Strided<T> strided(const at::Tensor& t) {
  TORCH_CHECK(t.dim() <= 5, "xscan._C: views have at most 5 dimensions, got ", t.dim());
  Strided<T> s;
  s.data = static_cast<T*>(t.data_ptr());
  for (int64_t i = 0; i < t.dim(); ++i) s.stride[i] = t.stride(i);
  return s;
}

template <typename T>
Strided<T> strided(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? strided<T>(*t) : Strided<T>();
}

// Views of one call. Per-token tensors are scalar_t; parameters, outputs and gradients acc_t.
//   u, z, y, du, dz, dy: (Bt, channels, rows, cols) pixel maps;  dt, ddt: (Bt, K, Dm, E);
//   B, C, dB, dC: (Bt, K, G, N, E);  A, dA: (K, Dm, N);  D, bias and their grads: (K, Dm);
//   last_state, dlast: (Bt, K, Dm, N);  checkpoints: (Bt, K, chunks - 1, Dm, N), the state at the
//   start of chunks 1, 2, ... (see kChunk), which a forward writes when given and a backward reads.
template <typename scalar_t, typename acc_t>
struct ScanViews {
  int64_t batch = 0, routes = 1, channels = 0, dstate = 0, groups_B = 1, groups_C = 1;
  bool delta_softplus = false;
  Strided<const scalar_t> u[2], dt[2], B[2], C[2], z;
  Strided<const acc_t> A, D, bias;
  Strided<acc_t> y[2], last_state, checkpoints;
  // backward only
  Strided<const acc_t> dy[2], dlast;
  Strided<acc_t> du[2], ddt[2], dz;  // dB, dC, dA, dD, dbias: see run_backward
};

// Channels per work item: a block of channels shares the route's tokens and B, C rows (loaded once
// per tile), so it never straddles a B or C group. `group_width` is the channels of one B and C group.
inline int64_t group_width(int64_t channels, int64_t groups_B, int64_t groups_C) {
  int64_t a = channels / groups_B, b = channels / groups_C;
  while (b) {
    const int64_t r = a % b;
    a = b, b = r;
  }
  return a;
}

// The forward's block: 16 or 8 channels when they divide the group (the widths Engine::recur unrolls).
inline int64_t channel_block(int64_t channels, int64_t groups_B, int64_t groups_C) {
  const int64_t a = group_width(channels, groups_B, groups_C);
  if (a % 16 == 0) return 16;
  if (a % 8 == 0) return 8;
  for (int64_t block = std::min<int64_t>(a, 16); block > 1; --block)
    if (a % block == 0) return block;
  return 1;
}

// The backward's block: the widest (up to 32 channels) that still gives every thread an item, else
// the widest. Its recurrences run across the block's channels, so a narrow block wastes vector lanes;
// and its per-token work (gathering B, C rows, scattering their gradients, strided through the
// token-major layouts) is shared by the block, so a wide block pays it fewer times.
inline int64_t backward_block(int64_t channels, int64_t groups_B, int64_t groups_C, int64_t batch, int64_t threads) {
  const int64_t a = group_width(channels, groups_B, groups_C);
  int64_t widest = 1;
  for (int64_t block = std::min<int64_t>(a, 32); block > 1; --block)
    if (a % block == 0) {
      if (widest == 1) widest = block;
      if (batch * (channels / block) >= threads) return block;
    }
  return widest;
}

// One thread's scratch. Shared by the block: tokens, B and C rows of one tile (a backward chunk or
// a forward tile) and their gradients. Block-major tiles (index [i][c] or [i][s][c]) for the
// recurrences, which run the block's channels side by side; one channel's tile while loading it.
template <typename acc_t>
struct Workspace {
  int64_t N, tile;  // d_state; positions per loaded tile
  std::vector<Token> tok;
  std::vector<acc_t*> out_at;                        // (tile): where a channel's outputs go
  std::vector<int64_t> at_dt, at_u, at_z, at_y;      // (tile): token offsets in a channel's plane
  std::vector<int64_t> at_dy, at_du, at_dz, at_ddt;  // (tile): the same in the gradients' planes
  bool run = false, grad_run = false;                // those offsets are consecutive (see load_tokens)
  std::vector<acc_t> Bc, Cc, dBc, dCc;               // (tile, N)
  std::vector<acc_t> dtT, dtuT, uT, yT;              // (tile, block)
  std::vector<acc_t> aT, hT;                         // (N, block)
  std::vector<acc_t> gT, Dc;                         // (block)
  std::vector<acc_t> dt, raw, dsp, u, out;           // one channel's tile
  // backward only
  std::vector<acc_t> dspT, gyT, zT, duT, ddtT;  // (tile, block); zT becomes dz
  std::vector<acc_t> statesT, decayT;           // (tile, N, block); decayT becomes the adjoint
  std::vector<acc_t> dhT, dAT;                  // (N, block)
  std::vector<acc_t> sumB, dD, dbias;           // (block)
  std::vector<acc_t> chunk_start;               // (chunks - 1, N, block) or none: see backward

  // backward: with the backward's buffers (the forward needs none of them); chunk_starts: the chunk
  // start states pass 1 keeps (0 where the forward saved them)
  Workspace(int64_t N_, int64_t block, bool backward, int64_t chunk_starts, int64_t tile_)
      : N(N_), tile(tile_), tok(tile_), out_at(tile_), at_dt(tile_), at_u(tile_), at_z(tile_), at_y(tile_),
        Bc(tile_ * N_), Cc(tile_ * N_), dtT(tile_ * block), dtuT(tile_ * block), uT(tile_ * block), yT(tile_ * block),
        aT(N_ * block), hT(N_ * block), gT(block), Dc(block), dt(tile_), raw(tile_), dsp(tile_), u(tile_), out(tile_) {
    if (!backward) return;
    for (auto* offsets : {&at_dy, &at_du, &at_dz, &at_ddt}) offsets->resize(tile_);
    for (auto* t : {&dBc, &dCc}) t->resize(tile_ * N_);
    for (auto* t : {&dspT, &gyT, &zT, &duT, &ddtT}) t->resize(tile_ * block);
    for (auto* t : {&statesT, &decayT}) t->resize(tile_ * N_ * block);
    for (auto* t : {&dhT, &dAT}) t->resize(N_ * block);
    for (auto* t : {&sumB, &dD, &dbias}) t->resize(block);
    chunk_start.resize(chunk_starts * N_ * block);
  }
};

}  // namespace cpu
}  // namespace xscan
