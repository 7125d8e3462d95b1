// The CPU scan engine: one templated forward and backward recurrence for every xscan op.
//
// Every op is a set of independent scans over route positions j. A route policy (csrc/include/xscan/routes.h)
// turns (route k, channel d, position j) into the token read there: which modality, its index e in
// the per-token tensors (dt, B, C) and its pixel in the input map u and in the output map y. The
// engine reads through strided views, so nothing is flipped, transposed, interleaved or copied into
// route order.
//
// Work is split over (batch b, block of channels) items with OpenMP, handed out to the threads one
// at a time (the backward: one contiguous range of items at a time), so a thread that shares its core
// with another process does less of the call; one thread runs all K routes of its item, so it owns y,
// du, ddelta, dz of those channels and the route sums need no atomics. Gradients of tensors shared
// between items (B, C of a group; A, D, delta_bias across the batch) go to per-range partial buffers
// summed afterwards in range order: deterministic for a given thread count.
//
// Both directions run a block's channels side by side, so their inner loops vectorise across
// channels for any d_state, without reductions in the recurrences (see channel_block,
// backward_block).
//
// Backward keeps no (L, N) history, only the state at every chunk start (one chunk of kChunk steps):
// from the forward's checkpoints when it saved them (a forward run for training writes them: per
// route N / kChunk of u's size), else from a first pass that reruns the forward's recurrence. The
// reverse pass recomputes each chunk's states and decays from its start, keeps them for its adjoint
// sweep, and sums the B and C gradients over the block's channels after the sweep.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "xscan/routes.h"
#include "xscan/scan_math.h"

namespace xscan {
namespace cpu {

constexpr int64_t kRangesPerThread = 4;  // backward: ranges of items per thread (see run_backward)
constexpr int64_t kChunk = 64;           // steps per checkpointed chunk of the backward
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

template <typename scalar_t, typename acc_t, typename Route>
struct Engine {
  const ScanViews<scalar_t, acc_t>& v;
  const Route& route;
  int64_t block;  // channels per item

  int64_t group(int64_t d, int64_t groups) const { return d / (v.channels / groups); }

  // Tokens and B, C rows of positions [j0, j0 + n) of route k, for the block starting at d0.
  void load_tokens(Workspace<acc_t>& ws, int64_t b, int64_t k, int64_t d0, int64_t j0, int64_t n) const {
    const int64_t N = v.dstate, gB = group(d0, v.groups_B), gC = group(d0, v.groups_C);
    for (int64_t i = 0; i < n; ++i) {
      const Token t = route.at(k, j0 + i);
      ws.tok[i] = t;
      if constexpr (Route::kSameChannel) {  // offsets within a (batch, channel) plane, for every channel
        ws.at_dt[i] = t.e * v.dt[t.m].stride[3];
        ws.at_u[i] = t.ur * v.u[t.m].stride[2] + t.uw * v.u[t.m].stride[3];
        ws.at_z[i] = t.ur * v.z.stride[2] + t.uw * v.z.stride[3];
        ws.at_y[i] = t.yr * v.y[t.m].stride[2] + t.yw * v.y[t.m].stride[3];
        if (v.dy[0]) {  // a backward
          ws.at_dy[i] = t.yr * v.dy[t.m].stride[2] + t.yw * v.dy[t.m].stride[3];
          ws.at_du[i] = t.ur * v.du[t.m].stride[2] + t.uw * v.du[t.m].stride[3];
          ws.at_dz[i] = t.ur * v.dz.stride[2] + t.uw * v.dz.stride[3];
          ws.at_ddt[i] = t.e * v.ddt[t.m].stride[3];
        }
      }
      const scalar_t* Bp = v.B[t.m].at5(b, k, gB, 0, t.e);
      const scalar_t* Cp = v.C[t.m].at5(b, k, gC, 0, t.e);
      const int64_t sB = v.B[t.m].stride[3], sC = v.C[t.m].stride[3];
      acc_t* Bd = &ws.Bc[i * N];
      acc_t* Cd = &ws.Cc[i * N];
      for (int64_t s = 0; s < N; ++s) {
        Bd[s] = static_cast<acc_t>(Bp[s * sB]);
        Cd[s] = static_cast<acc_t>(Cp[s * sC]);
      }
    }
    if constexpr (Route::kSameChannel) {
      // A run: the tile is consecutive elements of modality 0's planes (a plain scan, route 0 of a
      // map): then the channel loops stream them as vectors.
      bool run = true;
      for (int64_t i = 0; i < n && run; ++i)
        run = ws.tok[i].m == 0 && !ws.tok[i].pad && ws.at_dt[i] == ws.at_dt[0] + i && ws.at_u[i] == ws.at_u[0] + i &&
              ws.at_y[i] == ws.at_y[0] + i && (!v.z || ws.at_z[i] == ws.at_z[0] + i);
      ws.run = run;
      bool grad_run = run && v.dy[0];
      for (int64_t i = 0; i < n && grad_run; ++i)
        grad_run = ws.at_dy[i] == ws.at_dy[0] + i && ws.at_du[i] == ws.at_du[0] + i &&
                   ws.at_ddt[i] == ws.at_ddt[0] + i && (!v.z || ws.at_dz[i] == ws.at_dz[0] + i);
      ws.grad_run = grad_run;
    }
  }

  // Where (batch b, channel d) starts in a (Bt, channels, ...) view.
  template <typename T>
  static T* plane(const Strided<T>& s, int64_t b, int64_t d) {
    return s.data + b * s.stride[0] + d * s.stride[1];
  }

  // Channel d's step sizes and inputs over the loaded chunk, and with grad d softplus / d raw.
  void load_channel(Workspace<acc_t>& ws, int64_t b, int64_t k, int64_t d, int64_t n, acc_t bias,
                    bool grad = true) const {
    if constexpr (Route::kSameChannel) {
      const scalar_t* dt[2] = {v.dt[0].data + b * v.dt[0].stride[0] + k * v.dt[0].stride[1] + d * v.dt[0].stride[2],
                               v.dt[1].data + b * v.dt[1].stride[0] + k * v.dt[1].stride[1] + d * v.dt[1].stride[2]};
      const scalar_t* u[2] = {plane(v.u[0], b, d), plane(v.u[1], b, d)};
      if (ws.run) {
        const scalar_t* dt0 = dt[0] + ws.at_dt[0];
        const scalar_t* u0 = u[0] + ws.at_u[0];
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          ws.raw[i] = static_cast<acc_t>(dt0[i]) + bias;
          ws.u[i] = static_cast<acc_t>(u0[i]);
        }
      } else {
        for (int64_t i = 0; i < n; ++i) {
          const Token& t = ws.tok[i];
          ws.raw[i] = static_cast<acc_t>(dt[t.m][ws.at_dt[i]]) + bias;
          ws.u[i] = t.pad ? acc_t(0) : static_cast<acc_t>(u[t.m][ws.at_u[i]]);
        }
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        Token t = ws.tok[i];
        route.source(d, t);
        ws.raw[i] = static_cast<acc_t>(v.dt[t.m](b, k, d, t.e)) + bias;
        ws.u[i] = t.pad ? acc_t(0) : static_cast<acc_t>(v.u[t.m](b, t.uc, t.ur, t.uw));
      }
    }
    if (v.delta_softplus) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) ws.dt[i] = softplus_vec(ws.raw[i]);
      if (grad) {
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) ws.dsp[i] = sigmoid_vec(ws.raw[i]);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) ws.dt[i] = ws.raw[i], ws.dsp[i] = acc_t(1);
    }
  }

  // A of the block's channels, block-major.
  void load_A(Workspace<acc_t>& ws, int64_t k, int64_t d0) const {
    const int64_t N = v.dstate;
    for (int64_t c = 0; c < block; ++c)
      for (int64_t s = 0; s < N; ++s) ws.aT[s * block + c] = v.A(k, d0 + c, s, 0);
  }

  acc_t param(const Strided<const acc_t>& p, int64_t k, int64_t d) const { return p ? p(k, d, 0, 0) : acc_t(0); }

  // The block's step sizes and inputs over the loaded tile of n positions, block-major (dtT, uT,
  // dtuT; with grad also dspT, d softplus / d raw).
  void load_block(Workspace<acc_t>& ws, int64_t b, int64_t k, int64_t d0, int64_t n, bool grad) const {
    const int64_t nb = block;
    for (int64_t c = 0; c < nb; ++c) {
      load_channel(ws, b, k, d0 + c, n, param(v.bias, k, d0 + c), grad);
      for (int64_t i = 0; i < n; ++i) {
        ws.dtT[i * nb + c] = ws.dt[i];
        ws.uT[i * nb + c] = ws.u[i];
        ws.dtuT[i * nb + c] = ws.dt[i] * ws.u[i];
      }
      if (grad)
        for (int64_t i = 0; i < n; ++i) ws.dspT[i * nb + c] = ws.dsp[i];
    }
  }

  // The block's channels over positions [first, n) of the loaded tile, side by side (the inner
  // loops run across channels, so they vectorise for any d_state without a reduction), from the
  // states in hT. with_y puts C . h of every position i in yT[i] (block). Without `states`, hT
  // carries the states on; with it (first = 0), the states and decays of position i go to states
  // and decays[i] (each (N, block)) and hT keeps the tile's start.
  void advance_block(Workspace<acc_t>& ws, int64_t first, int64_t n, bool with_y, acc_t* states = nullptr,
                     acc_t* decays = nullptr) const {
    // a block width known at compile time unrolls the channel loops without masked tails
    if (states) {
      if (block == 32) return recur<32, true>(ws, first, n, with_y, states, decays);
      if (block == 16) return recur<16, true>(ws, first, n, with_y, states, decays);
      if (block == 8) return recur<8, true>(ws, first, n, with_y, states, decays);
      return recur<0, true>(ws, first, n, with_y, states, decays);
    }
    if (block == 32) return recur<32, false>(ws, first, n, with_y, nullptr, nullptr);
    if (block == 16) return recur<16, false>(ws, first, n, with_y, nullptr, nullptr);
    if (block == 8) return recur<8, false>(ws, first, n, with_y, nullptr, nullptr);
    recur<0, false>(ws, first, n, with_y, nullptr, nullptr);
  }

  // The recurrence of advance_block; kWidth: the block width, 0 if not fixed.
  template <int kWidth, bool kStore>
  void recur(Workspace<acc_t>& ws, int64_t first, int64_t n, bool with_y, acc_t* states, acc_t* decays) const {
    const int64_t N = v.dstate, nb = kWidth ? kWidth : block;
    acc_t* g = ws.gT.data();
    const acc_t* a = ws.aT.data();
    for (int64_t i = first; i < n; ++i) {
      const acc_t* dt = &ws.dtT[i * nb];
      const acc_t* dtu = &ws.dtuT[i * nb];
      const acc_t* Bn = &ws.Bc[i * N];
      const acc_t* Cn = &ws.Cc[i * N];
      const acc_t* h_in = kStore && i ? states + (i - 1) * N * nb : ws.hT.data();
      acc_t* h_out = kStore ? states + i * N * nb : ws.hT.data();
      acc_t* decay = kStore ? decays + i * N * nb : nullptr;
      acc_t* y = &ws.yT[i * nb];
      if (Route::kScalarDecay) {
#pragma omp simd
        for (int64_t c = 0; c < nb; ++c) g[c] = exp_poly(dt[c] * a[c]);
      }
      if (with_y) std::fill(y, y + nb, acc_t(0));
      for (int64_t s = 0; s < N; ++s) {
        const acc_t* hp = h_in + s * nb;
        acc_t* hs = h_out + s * nb;
        const acc_t* as = a + s * nb;
        const acc_t Bs = Bn[s], Cs = Cn[s];
        if (Route::kScalarDecay) {
#pragma omp simd
          for (int64_t c = 0; c < nb; ++c) hs[c] = g[c] * hp[c] + dtu[c] * Bs;
          if (kStore) std::copy(g, g + nb, decay + s * nb);
        } else {
#pragma omp simd
          for (int64_t c = 0; c < nb; ++c) {
            const acc_t gc = exp_poly(dt[c] * as[c]);
            hs[c] = gc * hp[c] + dtu[c] * Bs;
            if (kStore) decay[s * nb + c] = gc;
          }
        }
        if (with_y) {
#pragma omp simd
          for (int64_t c = 0; c < nb; ++c) y[c] += Cs * hs[c];
        }
      }
    }
  }

  // Forward of channels [d0, d0 + block) of batch b along route k: accumulates into y.
  void forward(Workspace<acc_t>& ws, int64_t b, int64_t k, int64_t d0) const {
    const int64_t N = v.dstate, len = route.length(), nb = block;
    load_A(ws, k, d0);
    std::fill(ws.hT.begin(), ws.hT.end(), acc_t(0));
    for (int64_t j0 = 0; j0 < len; j0 += ws.tile) {
      const int64_t n = std::min(ws.tile, len - j0);
      load_tokens(ws, b, k, d0, j0, n);
      load_block(ws, b, k, d0, n, false);
      // chunk by chunk, to checkpoint the state at each chunk start the route reaches
      for (int64_t i = 0; i < n; i += kChunk) {
        const int64_t end = std::min(i + kChunk, n);
        advance_block(ws, i, end, true);
        if (v.checkpoints && j0 + end < len) save_checkpoint(ws, b, k, d0, (j0 + end) / kChunk);
      }
      for (int64_t c = 0; c < nb; ++c) {
        const int64_t d = d0 + c;
        const acc_t Dk = param(v.D, k, d);
        acc_t* out = ws.out.data();  // this channel's outputs of the tile
        acc_t* zc = ws.raw.data();
        acc_t* run_out = nullptr;  // the outputs' run, when the tile is one
        if constexpr (Route::kSameChannel) {
          acc_t* y[2] = {plane(v.y[0], b, d), plane(v.y[1], b, d)};
          const scalar_t* z = plane(v.z, b, d);
          if (ws.run) {
            run_out = y[0] + ws.at_y[0];
            if (v.z) {
              const scalar_t* z0 = z + ws.at_z[0];
#pragma omp simd
              for (int64_t i = 0; i < n; ++i) zc[i] = static_cast<acc_t>(z0[i]);
            }
          } else
            for (int64_t i = 0; i < n; ++i) {
              const Token& t = ws.tok[i];
              ws.out_at[i] = t.pad ? nullptr : y[t.m] + ws.at_y[i];
              if (v.z) zc[i] = t.pad ? acc_t(0) : static_cast<acc_t>(z[ws.at_z[i]]);
            }
        } else {
          for (int64_t i = 0; i < n; ++i) {
            Token t = ws.tok[i];
            route.source(d, t);
            ws.out_at[i] = t.pad ? nullptr : &v.y[t.m](b, t.yc, t.yr, t.yw);
            if (v.z) zc[i] = t.pad ? acc_t(0) : static_cast<acc_t>(v.z(b, t.uc, t.ur, t.uw));
          }
        }
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) out[i] = ws.yT[i * nb + c] + Dk * ws.uT[i * nb + c];
        if (v.z) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) out[i] *= zc[i] * sigmoid_vec(zc[i]);
        }
        if (run_out) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) run_out[i] += out[i];
        } else
          for (int64_t i = 0; i < n; ++i)
            if (ws.out_at[i]) *ws.out_at[i] += out[i];
      }
    }
    if (v.last_state)
      for (int64_t c = 0; c < nb; ++c)
        for (int64_t s = 0; s < N; ++s) v.last_state(b, k, d0 + c, s) = ws.hT[s * nb + c];
  }

  // The block's state in hT, the start of chunk ch (> 0), into the checkpoints.
  void save_checkpoint(const Workspace<acc_t>& ws, int64_t b, int64_t k, int64_t d0, int64_t ch) const {
    for (int64_t c = 0; c < block; ++c) {
      acc_t* h = v.checkpoints.at5(b, k, ch - 1, d0 + c, 0);
      for (int64_t s = 0; s < v.dstate; ++s) h[s * v.checkpoints.stride[4]] = ws.hT[s * block + c];
    }
  }

  // hT = the block's state at the start of chunk ch: zero for the first, else the forward's
  // checkpoint if it saved them, else pass 1's.
  void load_chunk_start(Workspace<acc_t>& ws, int64_t b, int64_t k, int64_t d0, int64_t ch) const {
    const int64_t N = v.dstate, plane_size = N * block;
    if (ch == 0) {
      std::fill(ws.hT.begin(), ws.hT.end(), acc_t(0));
    } else if (v.checkpoints) {
      for (int64_t c = 0; c < block; ++c) {
        const acc_t* h = v.checkpoints.at5(b, k, ch - 1, d0 + c, 0);
        for (int64_t s = 0; s < N; ++s) ws.hT[s * block + c] = h[s * v.checkpoints.stride[4]];
      }
    } else {
      std::copy(ws.chunk_start.begin() + (ch - 1) * plane_size, ws.chunk_start.begin() + ch * plane_size,
                ws.hT.begin());
    }
  }

  // Where one thread's gradients of shared tensors go (its partial buffers, or the real ones).
  enum Slot { kdB0, kdB1, kdC0, kdC1, kdA, kdD, kdBias, kSlots };
  struct Sinks {
    Strided<acc_t> slot[kSlots];
  };

  // Backward of channels [d0, d0 + block) of batch b along route k, the block's channels side by
  // side as in the forward.
  void backward(Workspace<acc_t>& ws, const Sinks& out, int64_t b, int64_t k, int64_t d0) const {
    const int64_t N = v.dstate, len = route.length(), nb = block, plane_size = N * nb;
    const int64_t chunks = (len + kChunk - 1) / kChunk;
    const int64_t gB = group(d0, v.groups_B), gC = group(d0, v.groups_C);
    load_A(ws, k, d0);
    for (int64_t c = 0; c < nb; ++c) ws.Dc[c] = param(v.D, k, d0 + c);

    // Pass 1, without the forward's checkpoints: the block's states at the chunk starts after the
    // first, (chunks - 1, N, block).
    if (!v.checkpoints) {
      std::fill(ws.hT.begin(), ws.hT.end(), acc_t(0));
      for (int64_t ch = 0; ch < chunks - 1; ++ch) {
        load_tokens(ws, b, k, d0, ch * kChunk, kChunk);
        load_block(ws, b, k, d0, kChunk, false);
        advance_block(ws, 0, kChunk, false);
        std::copy(ws.hT.begin(), ws.hT.end(), ws.chunk_start.begin() + ch * plane_size);
      }
    }

    // Pass 2, last chunk first: recompute the chunk's states and decays from its start, then run
    // the adjoint recurrence dh_{t-1} = exp(dt_t A) dh_t, with dh_t += C_t gy_t at each output.
    for (int64_t c = 0; c < nb; ++c)
      for (int64_t s = 0; s < N; ++s) ws.dhT[s * nb + c] = v.dlast ? v.dlast(b, k, d0 + c, s) : acc_t(0);
    std::fill(ws.dAT.begin(), ws.dAT.end(), acc_t(0));
    std::fill(ws.dD.begin(), ws.dD.end(), acc_t(0));
    std::fill(ws.dbias.begin(), ws.dbias.end(), acc_t(0));
    for (int64_t ch = chunks - 1; ch >= 0; --ch) {
      const int64_t j0 = ch * kChunk, n = std::min(kChunk, len - j0);
      load_tokens(ws, b, k, d0, j0, n);
      load_block(ws, b, k, d0, n, true);
      load_chunk_start(ws, b, k, d0, ch);
      advance_block(ws, 0, n, static_cast<bool>(v.z), ws.statesT.data(), ws.decayT.data());
      load_output_grads(ws, b, d0, n);
      gate_backward(ws, n);
      adjoint_sweep(ws, n);
      store_input_grads(ws, b, k, d0, n);
      // the block's B, C gradients of this chunk, summed over its channels
      for (int64_t i = 0; i < n; ++i) {
        const Token& t = ws.tok[i];
        const Strided<acc_t>& dBv = out.slot[kdB0 + t.m];
        const Strided<acc_t>& dCv = out.slot[kdC0 + t.m];
        acc_t* dBp = dBv.at5(b, k, gB, 0, t.e);
        acc_t* dCp = dCv.at5(b, k, gC, 0, t.e);
        const int64_t sB = dBv.stride[3], sC = dCv.stride[3];
        for (int64_t s = 0; s < N; ++s) {
          dBp[s * sB] += ws.dBc[i * N + s];
          dCp[s * sC] += ws.dCc[i * N + s];
        }
      }
    }
    for (int64_t c = 0; c < nb; ++c) {
      const int64_t d = d0 + c;
      for (int64_t s = 0; s < N; ++s) out.slot[kdA](k, d, s, 0) += ws.dAT[s * nb + c];
      if (out.slot[kdD]) out.slot[kdD](k, d, 0, 0) += ws.dD[c];
      if (out.slot[kdBias]) out.slot[kdBias](k, d, 0, 0) += ws.dbias[c];
    }
  }

  // The output gradients (gyT) and gates (zT) of the loaded tile, block-major.
  void load_output_grads(Workspace<acc_t>& ws, int64_t b, int64_t d0, int64_t n) const {
    const int64_t nb = block;
    for (int64_t c = 0; c < nb; ++c) {
      const int64_t d = d0 + c;
      if constexpr (Route::kSameChannel) {
        const acc_t* dy[2] = {plane(v.dy[0], b, d), plane(v.dy[1], b, d)};
        const scalar_t* z = plane(v.z, b, d);
        if (ws.grad_run) {
          const acc_t* dy0 = dy[0] + ws.at_dy[0];
          for (int64_t i = 0; i < n; ++i) ws.gyT[i * nb + c] = dy0[i];
          if (v.z) {
            const scalar_t* z0 = z + ws.at_z[0];
            for (int64_t i = 0; i < n; ++i) ws.zT[i * nb + c] = static_cast<acc_t>(z0[i]);
          }
        } else {
          for (int64_t i = 0; i < n; ++i) {
            const Token& t = ws.tok[i];
            ws.gyT[i * nb + c] = t.pad ? acc_t(0) : dy[t.m][ws.at_dy[i]];
            if (v.z) ws.zT[i * nb + c] = t.pad ? acc_t(0) : static_cast<acc_t>(z[ws.at_z[i]]);
          }
        }
      } else {
        for (int64_t i = 0; i < n; ++i) {
          Token t = ws.tok[i];
          route.source(d, t);
          ws.gyT[i * nb + c] = t.pad ? acc_t(0) : v.dy[t.m](b, t.yc, t.yr, t.yw);
          if (v.z) ws.zT[i * nb + c] = t.pad ? acc_t(0) : static_cast<acc_t>(v.z(b, t.uc, t.ur, t.uw));
        }
      }
    }
  }

  // Through the gate y = (C . h + D u) silu(z): dz into zT, gy scaled by silu(z); D's gradient.
  void gate_backward(Workspace<acc_t>& ws, int64_t n) const {
    const int64_t nb = block;
    for (int64_t i = 0; i < n; ++i) {
      acc_t* gy = &ws.gyT[i * nb];
      const acc_t* u = &ws.uT[i * nb];
      if (v.z) {
        acc_t* z = &ws.zT[i * nb];
        const acc_t* ch = &ws.yT[i * nb];
#pragma omp simd
        for (int64_t c = 0; c < nb; ++c) {
          const acc_t zv = z[c], sg = sigmoid_vec(zv);
          z[c] = gy[c] * (ch[c] + ws.Dc[c] * u[c]) * sg * (acc_t(1) + zv * (acc_t(1) - sg));
          gy[c] *= zv * sg;
        }
      }
#pragma omp simd
      for (int64_t c = 0; c < nb; ++c) ws.dD[c] += gy[c] * u[c];
    }
  }

  // The adjoint recurrence over the tile, last position first, across the block's channels: du,
  // ddt (before softplus' derivative) into duT, ddtT, dA and delta_bias accumulated; then the B and C
  // gradients of each position summed over the channels into dBc, dCc. decayT holds the adjoint
  // states dh_i + C_i gy_i afterwards (what dB needs).
  void adjoint_sweep(Workspace<acc_t>& ws, int64_t n) const {
    const int64_t N = v.dstate, nb = block, plane_size = N * nb;
    acc_t* dh = ws.dhT.data();
    acc_t* dA = ws.dAT.data();
    const acc_t* a = ws.aT.data();
    acc_t* sB = ws.sumB.data();  // per channel: sum_s dh_s B_s
    for (int64_t i = n - 1; i >= 0; --i) {
      const acc_t* gy = &ws.gyT[i * nb];
      const acc_t* dt = &ws.dtT[i * nb];
      const acc_t* u = &ws.uT[i * nb];
      const acc_t* hp = i ? &ws.statesT[(i - 1) * plane_size] : ws.hT.data();
      acc_t* g = &ws.decayT[i * plane_size];
      acc_t* ddt = &ws.ddtT[i * nb];
      const acc_t* Bn = &ws.Bc[i * N];
      const acc_t* Cn = &ws.Cc[i * N];
      std::fill(sB, sB + nb, acc_t(0));
      std::fill(ddt, ddt + nb, acc_t(0));
      for (int64_t s = 0; s < N; ++s) {
        const acc_t Bs = Bn[s], Cs = Cn[s];
        acc_t* dhs = dh + s * nb;
        acc_t* gs = g + s * nb;
        acc_t* dAs = dA + s * nb;
        const acc_t* hps = hp + s * nb;
        const acc_t* as = a + s * nb;
#pragma omp simd
        for (int64_t c = 0; c < nb; ++c) {
          const acc_t adj = dhs[c] + gy[c] * Cs;
          const acc_t decay_term = adj * gs[c] * hps[c];  // d/d(dt A) of the decay term
          sB[c] += adj * Bs;
          ddt[c] += decay_term * as[c];
          dAs[c] += decay_term * dt[c];
          dhs[c] = adj * gs[c];
          gs[c] = adj;
        }
      }
      acc_t* du = &ws.duT[i * nb];
      const acc_t* dsp = &ws.dspT[i * nb];
#pragma omp simd
      for (int64_t c = 0; c < nb; ++c) {
        du[c] = gy[c] * ws.Dc[c] + dt[c] * sB[c];
        ddt[c] = (ddt[c] + u[c] * sB[c]) * dsp[c];
        ws.dbias[c] += ddt[c];
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      const acc_t* gy = &ws.gyT[i * nb];
      const acc_t* dtu = &ws.dtuT[i * nb];
      for (int64_t s = 0; s < N; ++s) {
        const acc_t* adj = &ws.decayT[i * plane_size + s * nb];
        const acc_t* h = &ws.statesT[i * plane_size + s * nb];
        acc_t dB = 0, dC = 0;
#pragma omp simd reduction(+ : dB, dC)
        for (int64_t c = 0; c < nb; ++c) {
          dB += adj[c] * dtu[c];
          dC += gy[c] * h[c];
        }
        ws.dBc[i * N + s] = dB;
        ws.dCc[i * N + s] = dC;
      }
    }
  }

  // Adds the tile's du, ddt and dz into their gradients.
  void store_input_grads(Workspace<acc_t>& ws, int64_t b, int64_t k, int64_t d0, int64_t n) const {
    const int64_t nb = block;
    for (int64_t c = 0; c < nb; ++c) {
      const int64_t d = d0 + c;
      if constexpr (Route::kSameChannel) {
        acc_t* du[2] = {plane(v.du[0], b, d), plane(v.du[1], b, d)};
        acc_t* ddt[2] = {v.ddt[0].data + b * v.ddt[0].stride[0] + k * v.ddt[0].stride[1] + d * v.ddt[0].stride[2],
                         v.ddt[1].data + b * v.ddt[1].stride[0] + k * v.ddt[1].stride[1] + d * v.ddt[1].stride[2]};
        acc_t* dz = plane(v.dz, b, d);
        if (ws.grad_run) {
          acc_t* du0 = du[0] + ws.at_du[0];
          acc_t* ddt0 = ddt[0] + ws.at_ddt[0];
          for (int64_t i = 0; i < n; ++i) du0[i] += ws.duT[i * nb + c], ddt0[i] += ws.ddtT[i * nb + c];
          if (v.z) {
            acc_t* dz0 = dz + ws.at_dz[0];
            for (int64_t i = 0; i < n; ++i) dz0[i] += ws.zT[i * nb + c];
          }
        } else {
          for (int64_t i = 0; i < n; ++i) {
            const Token& t = ws.tok[i];
            ddt[t.m][ws.at_ddt[i]] += ws.ddtT[i * nb + c];
            if (t.pad) continue;
            du[t.m][ws.at_du[i]] += ws.duT[i * nb + c];
            if (v.z) dz[ws.at_dz[i]] += ws.zT[i * nb + c];
          }
        }
      } else {
        for (int64_t i = 0; i < n; ++i) {
          Token t = ws.tok[i];
          route.source(d, t);
          v.ddt[t.m](b, k, d, t.e) += ws.ddtT[i * nb + c];
          if (t.pad) continue;
          v.du[t.m](b, t.uc, t.ur, t.uw) += ws.duT[i * nb + c];
          if (v.z) v.dz(b, t.uc, t.ur, t.uw) += ws.zT[i * nb + c];
        }
      }
    }
  }
};

// Extent in elements of a view with non-negative strides: the span its buffer must cover.
inline int64_t view_extent(const at::Tensor& t) {
  int64_t extent = 1;
  for (int64_t i = 0; i < t.dim(); ++i) extent += (t.size(i) - 1) * t.stride(i);
  return extent;
}

// Per-range partial buffers of one gradient view (see run_backward): range i writes through the same
// strides into its own copy; reduce() adds the copies into the view in range order.
template <typename acc_t>
struct Partials {
  at::Tensor buffer;  // (ranges, extent)
  Strided<acc_t> view;
  int64_t extent = 0;

  Partials() = default;
  Partials(const at::Tensor& grad, int64_t ranges) : view(strided<acc_t>(grad)), extent(view_extent(grad)) {
    buffer = at::zeros({ranges, extent}, grad.options());
  }
  Strided<acc_t> for_range(int64_t i) const {
    Strided<acc_t> s = view;
    s.data = buffer.data_ptr<acc_t>() + i * extent;
    return s;
  }
  void reduce() {
    const int64_t ranges = buffer.size(0);
    const acc_t* parts = buffer.data_ptr<acc_t>();
    acc_t* dst = view.data;
    const int64_t extent_ = extent;
    at::parallel_for(0, extent_, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t i = 0; i < ranges; ++i)
        for (int64_t o = lo; o < hi; ++o) dst[o] += parts[i * extent_ + o];
    });
  }
};

inline int64_t team_size() { return std::max<int64_t>(1, at::get_num_threads()); }

// Threads for `items` work items of `work` state updates in all: small calls run on one thread
// (waking a team costs more than they do).
inline int64_t threads_for(int64_t items, int64_t work) {
  constexpr int64_t kMinWorkPerThread = 1 << 16;
  return std::max<int64_t>(1, std::min({team_size(), items, work / kMinWorkPerThread}));
}

template <typename scalar_t, typename acc_t, typename Route>
void run_forward(const ScanViews<scalar_t, acc_t>& v, const Route& route) {
  const int64_t block = channel_block(v.channels, v.groups_B, v.groups_C);
  const Engine<scalar_t, acc_t, Route> engine{v, route, block};
  const int64_t blocks = v.channels / block, items = v.batch * blocks;
  const int64_t threads = threads_for(items, v.batch * v.channels * v.routes * route.length() * v.dstate);
#pragma omp parallel num_threads(threads)
  {
    Workspace<acc_t> ws(v.dstate, block, false, 0, kForwardTile);
    // Items are handed out one at a time: a thread that shares its core with another process takes
    // fewer of them instead of holding the whole call (items write disjoint outputs, so the results
    // do not depend on which thread runs which).
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item)
      for (int64_t k = 0; k < v.routes; ++k) engine.forward(ws, item / blocks, k, (item % blocks) * block);
  }
}

// B and C gradients need no partials when a block is a whole group: then one item owns them.
inline bool owned_by_item(const at::Tensor& grad, int64_t channels, int64_t groups, int64_t block) {
  const bool distinct_batches = grad.size(0) == 1 || grad.stride(0) != 0;
  const bool distinct_groups = groups == 1 || grad.stride(2) != 0;
  return channels / groups == block && distinct_batches && distinct_groups;
}

// The items of range r of R: contiguous, the same split every call.
inline int64_t range_start(int64_t r, int64_t ranges, int64_t items) { return r * items / ranges; }

inline int64_t owner_of(int64_t item, int64_t ranges, int64_t items) {
  int64_t r = 0;
  while (range_start(r + 1, ranges, items) <= item) ++r;
  return r;
}

// Gradient of a tensor with a batch axis (B, C) that items of several ranges add into. Items run
// batch-major in contiguous ranges, so a batch is shared by ranges only at their edges: there a
// range adds into its own copy of that batch's slice, elsewhere into the tensor itself. reduce() adds
// the copies in range order (deterministic for a given number of ranges).
template <typename acc_t>
struct BatchPartials {
  Strided<acc_t> view;
  int64_t ranges, items, blocks, slice;  // slice: elements of one batch (the batch stride)
  std::vector<char> shared;              // per batch: touched by more than one range
  at::Tensor copies;                     // (ranges, 2, slice): a range's first and last batch

  BatchPartials(const at::Tensor& grad, int64_t ranges_, int64_t items_, int64_t blocks_)
      : view(strided<acc_t>(grad)), ranges(ranges_), items(items_), blocks(blocks_), slice(grad.stride(0)) {
    const int64_t batch = grad.size(0);
    shared.resize(batch);
    bool any = false;
    for (int64_t b = 0; b < batch; ++b) {
      shared[b] = owner_of(b * blocks, ranges, items) != owner_of((b + 1) * blocks - 1, ranges, items);
      any = any || shared[b];
    }
    if (any) copies = at::zeros({ranges, 2, slice}, grad.options());
  }

  // Valid for a view whose batch slices are disjoint, contiguous spans of memory.
  static bool applies(const at::Tensor& grad) {
    return grad.stride(0) > 0 && view_extent(grad.select(0, 0)) <= grad.stride(0);
  }

  Strided<acc_t> for_item(int64_t r, int64_t b) const {
    Strided<acc_t> s = view;
    if (!shared[b]) return s;
    const int64_t which = b == range_start(r, ranges, items) / blocks ? 0 : 1;
    s.data = copies.data_ptr<acc_t>() + (r * 2 + which) * slice - b * slice;
    return s;
  }

  void reduce() {
    for (int64_t b = 0; b < static_cast<int64_t>(shared.size()); ++b) {
      if (!shared[b]) continue;
      acc_t* dst = view.data + b * slice;
      const int64_t first = owner_of(b * blocks, ranges, items), last = owner_of((b + 1) * blocks - 1, ranges, items);
      for (int64_t r = first; r <= last; ++r) {
        const int64_t which = b == range_start(r, ranges, items) / blocks ? 0 : 1;
        const acc_t* src = copies.data_ptr<acc_t>() + (r * 2 + which) * slice;
        for (int64_t o = 0; o < slice; ++o) dst[o] += src[o];
      }
    }
  }
};

template <typename scalar_t, typename acc_t, typename Route>
void run_backward(const ScanViews<scalar_t, acc_t>& v, const Route& route, const std::vector<at::Tensor>& dB,
                  const std::vector<at::Tensor>& dC, const at::Tensor& dA, const c10::optional<at::Tensor>& dD,
                  const c10::optional<at::Tensor>& dbias) {
  using E = Engine<scalar_t, acc_t, Route>;
  const int64_t len = route.length(), chunks = (len + kChunk - 1) / kChunk;
  const int64_t work = 3 * v.batch * v.channels * v.routes * len * v.dstate;
  const int64_t block =
      backward_block(v.channels, v.groups_B, v.groups_C, v.batch, threads_for(v.batch * v.channels, work));
  const E engine{v, route, block};
  const int64_t blocks = v.channels / block, items = v.batch * blocks;
  const int64_t threads = threads_for(items, work);
  // Contiguous ranges of items, kRangesPerThread per thread, handed out one at a time: a thread that
  // shares its core with another process takes fewer of them instead of holding the whole call. The
  // partial sums are per range, so the results depend on the number of ranges (on the thread count),
  // not on which thread ran which range.
  const int64_t ranges = std::min(items, threads * kRangesPerThread);

  typename E::Sinks shared;               // the real gradient views
  std::vector<Partials<acc_t>> partials;  // per-range copies of whole gradients (A, D, delta_bias)
  std::vector<int> partial_slot;
  std::vector<BatchPartials<acc_t>> batch_partials;  // per-range copies of shared batches (B, C)
  std::vector<int> batch_slot;
  auto sink = [&](int slot, const at::Tensor& grad, bool owned) {
    shared.slot[slot] = strided<acc_t>(grad);
    if (owned) return;
    if (BatchPartials<acc_t>::applies(grad) && slot < E::kdA) {
      batch_partials.emplace_back(grad, ranges, items, blocks);
      batch_slot.push_back(slot);
    } else {
      partials.emplace_back(grad, ranges);
      partial_slot.push_back(slot);
    }
  };
  for (size_t m = 0; m < dB.size(); ++m) {
    sink(E::kdB0 + m, dB[m], owned_by_item(dB[m], v.channels, v.groups_B, block));
    sink(E::kdC0 + m, dC[m], owned_by_item(dC[m], v.channels, v.groups_C, block));
  }
  sink(E::kdA, dA, false);
  if (dD) sink(E::kdD, *dD, false);
  if (dbias) sink(E::kdBias, *dbias, false);

  const int64_t chunk_starts = v.checkpoints ? 0 : std::max<int64_t>(chunks - 1, 0);  // pass 1's (backward)
#pragma omp parallel num_threads(threads)
  {
    Workspace<acc_t> ws(v.dstate, block, true, chunk_starts, kChunk);
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < ranges; ++r) {
      typename E::Sinks sinks = shared;
      for (size_t i = 0; i < partials.size(); ++i) sinks.slot[partial_slot[i]] = partials[i].for_range(r);
      const int64_t end = range_start(r + 1, ranges, items);
      for (int64_t item = range_start(r, ranges, items); item < end; ++item) {
        const int64_t b = item / blocks;
        for (size_t i = 0; i < batch_partials.size(); ++i) sinks.slot[batch_slot[i]] = batch_partials[i].for_item(r, b);
        for (int64_t k = 0; k < v.routes; ++k) engine.backward(ws, sinks, b, k, (item % blocks) * block);
      }
    }
  }
  for (auto& p : partials) p.reduce();
  for (auto& p : batch_partials) p.reduce();
}

}  // namespace cpu
}  // namespace xscan
