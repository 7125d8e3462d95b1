// The CPU scan engine: one templated forward and backward recurrence for every xscan op.
//
// Every op is a set of independent scans over route positions j. A route policy (csrc/include/xscan/routes.h)
// turns (route k, channel d, position j) into the token read there: which modality, its index e in
// the per-token tensors (dt, B, C) and its pixel in the input map u and in the output map y. The
// engine reads through strided views (scan_views.h), so nothing is flipped, transposed, interleaved
// or copied into route order. One Engine runs one work item (scan_run.h): all K routes of a batch
// and block of channels.
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

#include <algorithm>
#include <cstdint>
#include <vector>

#include "scan_views.h"
#include "xscan/routes.h"
#include "xscan/scan_math.h"

namespace xscan {
namespace cpu {

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

}  // namespace cpu
}  // namespace xscan
