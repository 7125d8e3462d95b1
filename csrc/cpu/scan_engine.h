// The CPU scan engine: one templated forward and backward recurrence for every xscan op.
//
// Every op is a set of independent scans over route positions j. A route policy (scan_routes.h)
// turns (route k, channel d, position j) into the token read there: which modality, its index e in
// the per-token tensors (dt, B, C) and its pixel in the input map u and in the output map y. The
// engine reads through strided views, so nothing is flipped, transposed, interleaved or copied into
// route order.
//
// Work is split over (batch b, channel d) items with OpenMP; one thread runs all K routes of its
// item, so it owns y, du, ddelta, dz of that item and the route sums need no atomics. Gradients of
// tensors shared between items (B, C of a group; A, D, delta_bias across the batch) go to per-thread
// partial buffers summed afterwards in thread order: deterministic for a given thread count.
//
// Backward keeps no (L, N) history: a first pass stores the state at every chunk start (one chunk of
// kChunk steps), then the reverse pass recomputes the states and decays inside each chunk.
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

#include "xscan/scan_math.h"

namespace xscan {
namespace cpu {

constexpr int64_t kChunk = 64;  // steps per checkpointed chunk of the backward

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
  Strided<T> s;
  s.data = static_cast<T*>(t.data_ptr());
  for (int64_t i = 0; i < t.dim(); ++i) s.stride[i] = t.stride(i);
  return s;
}

template <typename T>
Strided<T> strided(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? strided<T>(*t) : Strided<T>();
}

// The token at one route position, as a route policy returns it.
struct Token {
  int m;              // modality (0 or 1): which of the per-modality tensors it reads
  int64_t e;          // index along the per-token tensors' last axis
  int64_t uc, ur, uw;  // its pixel in u (channel, row, column)
  int64_t yc, yr, yw;  // where its output goes in y
  bool pad;           // padding: u reads 0, no output
};

// Views of one call. Per-token tensors are scalar_t; parameters, outputs and gradients acc_t.
//   u, z, y, du, dz, dy: (Bt, channels, rows, cols) pixel maps;  dt, ddt: (Bt, K, Dm, E);
//   B, C, dB, dC: (Bt, K, G, N, E);  A, dA: (K, Dm, N);  D, bias and their grads: (K, Dm);
//   last_state, dlast: (Bt, K, Dm, N).
template <typename scalar_t, typename acc_t>
struct ScanViews {
  int64_t batch = 0, routes = 1, channels = 0, dstate = 0, groups_B = 1, groups_C = 1;
  bool delta_softplus = false;
  Strided<const scalar_t> u[2], dt[2], B[2], C[2], z;
  Strided<const acc_t> A, D, bias;
  Strided<acc_t> y[2], last_state;
  // backward only
  Strided<const acc_t> dy[2], dlast;
  Strided<acc_t> du[2], ddt[2], dz;  // dB, dC, dA, dD, dbias: see run_backward
};

// One thread's scratch: the current chunk's tokens and a few N-vectors.
template <typename acc_t>
struct Workspace {
  int64_t N;
  std::vector<Token> tok;
  std::vector<acc_t> dt, raw, u, gate_in, Bc, Cc, decay, states, h, dh, a, dA, chunk_start;

  Workspace(int64_t N_, int64_t max_chunks)
      : N(N_), tok(kChunk), dt(kChunk), raw(kChunk), u(kChunk), gate_in(kChunk), Bc(kChunk * N_),
        Cc(kChunk * N_), decay(kChunk * N_), states(kChunk * N_), h(N_), dh(N_), a(N_), dA(N_),
        chunk_start(max_chunks * N_) {}
};

template <typename scalar_t, typename acc_t, typename Route>
struct Engine {
  const ScanViews<scalar_t, acc_t>& v;
  const Route& route;

  int64_t group(int64_t d, int64_t groups) const { return d / (v.channels / groups); }

  // Loads positions [j0, j0 + n) of route k into the workspace: token, step size, u, B and C rows.
  void load_chunk(Workspace<acc_t>& ws, int64_t b, int64_t k, int64_t d, int64_t j0, int64_t n,
                  acc_t bias) const {
    const int64_t N = v.dstate, gB = group(d, v.groups_B), gC = group(d, v.groups_C);
    for (int64_t i = 0; i < n; ++i) {
      const Token t = route.at(k, d, j0 + i);
      ws.tok[i] = t;
      const acc_t raw = static_cast<acc_t>(v.dt[t.m](b, k, d, t.e)) + bias;
      ws.raw[i] = raw;
      ws.dt[i] = v.delta_softplus ? softplus(raw) : raw;
      ws.u[i] = t.pad ? acc_t(0) : static_cast<acc_t>(v.u[t.m](b, t.uc, t.ur, t.uw));
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
  }

  void load_A(Workspace<acc_t>& ws, int64_t k, int64_t d) const {
    for (int64_t s = 0; s < v.dstate; ++s) ws.a[s] = v.A(k, d, s, 0);
  }

  acc_t param(const Strided<const acc_t>& p, int64_t k, int64_t d) const {
    return p ? p(k, d, 0, 0) : acc_t(0);
  }

  // One step h <- exp(dt A) h + dt u B, returning C . h; the decays go to `decay` when asked.
  static acc_t step(int64_t N, const acc_t* a, acc_t dt, acc_t dtu, const acc_t* Bn, const acc_t* Cn,
                    acc_t* h, acc_t* decay) {
    acc_t y = 0;
    if (Route::kScalarDecay) {
      const acc_t g = exp_poly(dt * a[0]);
#pragma omp simd reduction(+ : y)
      for (int64_t s = 0; s < N; ++s) {
        h[s] = g * h[s] + dtu * Bn[s];
        y += Cn[s] * h[s];
        if (decay) decay[s] = g;
      }
    } else {
#pragma omp simd reduction(+ : y)
      for (int64_t s = 0; s < N; ++s) {
        const acc_t g = exp_poly(dt * a[s]);
        h[s] = g * h[s] + dtu * Bn[s];
        y += Cn[s] * h[s];
        if (decay) decay[s] = g;
      }
    }
    return y;
  }

  // The forward of one (b, k, d) sequence: accumulates into y, writes last_state.
  void forward(Workspace<acc_t>& ws, int64_t b, int64_t k, int64_t d) const {
    const int64_t N = v.dstate, len = route.length();
    const acc_t bias = param(v.bias, k, d), Dk = param(v.D, k, d);
    load_A(ws, k, d);
    acc_t* h = ws.h.data();
    std::fill(ws.h.begin(), ws.h.end(), acc_t(0));
    for (int64_t j0 = 0; j0 < len; j0 += kChunk) {
      const int64_t n = std::min(kChunk, len - j0);
      load_chunk(ws, b, k, d, j0, n, bias);
      for (int64_t i = 0; i < n; ++i) {
        const acc_t dt = ws.dt[i], u = ws.u[i];
        acc_t y = step(N, ws.a.data(), dt, dt * u, &ws.Bc[i * N], &ws.Cc[i * N], h, nullptr) + Dk * u;
        const Token& t = ws.tok[i];
        if (t.pad) continue;
        if (v.z) y *= silu(static_cast<acc_t>(v.z(b, t.uc, t.ur, t.uw)));
        v.y[t.m](b, t.yc, t.yr, t.yw) += y;
      }
    }
    if (v.last_state)
      for (int64_t s = 0; s < N; ++s) v.last_state(b, k, d, s) = h[s];
  }

  // Where one thread's gradients of shared tensors go (its partial buffers, or the real ones).
  enum Slot { kdB0, kdB1, kdC0, kdC1, kdA, kdD, kdBias, kSlots };
  struct Sinks {
    Strided<acc_t> slot[kSlots];
  };

  // The backward of one (b, k, d) sequence.
  void backward(Workspace<acc_t>& ws, const Sinks& out, int64_t b, int64_t k, int64_t d) const {
    const int64_t N = v.dstate, len = route.length();
    const int64_t chunks = (len + kChunk - 1) / kChunk;
    const int64_t gB = group(d, v.groups_B), gC = group(d, v.groups_C);
    const acc_t bias = param(v.bias, k, d), Dk = param(v.D, k, d);
    load_A(ws, k, d);
    const acc_t* a = ws.a.data();
    acc_t* h = ws.h.data();

    // Pass 1: the state at every chunk start.
    std::fill(ws.h.begin(), ws.h.end(), acc_t(0));
    for (int64_t c = 0; c < chunks; ++c) {
      std::copy(ws.h.begin(), ws.h.end(), ws.chunk_start.begin() + c * N);
      const int64_t j0 = c * kChunk, n = std::min(kChunk, len - j0);
      load_chunk(ws, b, k, d, j0, n, bias);
      for (int64_t i = 0; i < n; ++i)
        step(N, a, ws.dt[i], ws.dt[i] * ws.u[i], &ws.Bc[i * N], &ws.Cc[i * N], h, nullptr);
    }

    // Pass 2, last chunk first: recompute the chunk's states, then run the adjoint recurrence
    //   dh_{t-1} = exp(dt_t A) (dh_t)  with dh_t += C_t gy_t at each output.
    acc_t* dh = ws.dh.data();
    for (int64_t s = 0; s < N; ++s) dh[s] = v.dlast ? v.dlast(b, k, d, s) : acc_t(0);
    std::fill(ws.dA.begin(), ws.dA.end(), acc_t(0));
    acc_t dD = 0, dbias = 0;
    for (int64_t c = chunks - 1; c >= 0; --c) {
      const int64_t j0 = c * kChunk, n = std::min(kChunk, len - j0);
      load_chunk(ws, b, k, d, j0, n, bias);
      std::copy(ws.chunk_start.begin() + c * N, ws.chunk_start.begin() + (c + 1) * N, ws.h.begin());
      for (int64_t i = 0; i < n; ++i) {
        ws.gate_in[i] = step(N, a, ws.dt[i], ws.dt[i] * ws.u[i], &ws.Bc[i * N], &ws.Cc[i * N], h,
                             &ws.decay[i * N]) + Dk * ws.u[i];
        std::copy(ws.h.begin(), ws.h.end(), ws.states.begin() + i * N);
      }
      for (int64_t i = n - 1; i >= 0; --i) {
        const Token& t = ws.tok[i];
        const acc_t dt = ws.dt[i], u = ws.u[i];
        acc_t gy = t.pad ? acc_t(0) : v.dy[t.m](b, t.yc, t.yr, t.yw);
        if (v.z && !t.pad) {
          const acc_t zv = static_cast<acc_t>(v.z(b, t.uc, t.ur, t.uw));
          v.dz(b, t.uc, t.ur, t.uw) += gy * ws.gate_in[i] * silu_grad(zv);
          gy *= silu(zv);
        }
        dD += gy * u;
        const acc_t* hn = &ws.states[i * N];
        const acc_t* hp = i > 0 ? &ws.states[(i - 1) * N] : &ws.chunk_start[c * N];
        const acc_t* g = &ws.decay[i * N];
        const acc_t* Bn = &ws.Bc[i * N];
        const acc_t* Cn = &ws.Cc[i * N];
        const Strided<acc_t>& dBv = out.slot[kdB0 + t.m];
        const Strided<acc_t>& dCv = out.slot[kdC0 + t.m];
        acc_t* dBp = dBv.at5(b, k, gB, 0, t.e);
        acc_t* dCp = dCv.at5(b, k, gC, 0, t.e);
        const int64_t sB = dBv.stride[3], sC = dCv.stride[3];
        const acc_t dtu = dt * u;
        acc_t du = gy * Dk, ddt = 0;
        acc_t* dA = ws.dA.data();
#pragma omp simd reduction(+ : du, ddt)
        for (int64_t s = 0; s < N; ++s) {
          dCp[s * sC] += gy * hn[s];
          const acc_t dhs = dh[s] + gy * Cn[s];
          dBp[s * sB] += dhs * dtu;
          du += dhs * dt * Bn[s];
          const acc_t dh_decay = dhs * g[s] * hp[s];  // d/d(dt A) of the decay term
          ddt += dh_decay * a[s] + dhs * Bn[s] * u;
          dA[s] += dh_decay * dt;
          dh[s] = dhs * g[s];
        }
        const acc_t draw = ddt * (v.delta_softplus ? softplus_grad(ws.raw[i]) : acc_t(1));
        dbias += draw;
        v.ddt[t.m](b, k, d, t.e) += draw;
        if (!t.pad) v.du[t.m](b, t.uc, t.ur, t.uw) += du;
      }
    }
    for (int64_t s = 0; s < N; ++s) out.slot[kdA](k, d, s, 0) += ws.dA[s];
    if (out.slot[kdD]) out.slot[kdD](k, d, 0, 0) += dD;
    if (out.slot[kdBias]) out.slot[kdBias](k, d, 0, 0) += dbias;
  }
};

// Extent in elements of a view with non-negative strides: the span its buffer must cover.
inline int64_t view_extent(const at::Tensor& t) {
  int64_t extent = 1;
  for (int64_t i = 0; i < t.dim(); ++i) extent += (t.size(i) - 1) * t.stride(i);
  return extent;
}

// Per-thread partial buffers of one gradient view: thread i writes through the same strides into
// its own copy; reduce() adds the copies into the view in thread order.
template <typename acc_t>
struct Partials {
  at::Tensor buffer;  // (threads, extent)
  Strided<acc_t> view;
  int64_t extent = 0;

  Partials() = default;
  Partials(const at::Tensor& grad, int64_t threads) : view(strided<acc_t>(grad)), extent(view_extent(grad)) {
    buffer = at::zeros({threads, extent}, grad.options());
  }
  Strided<acc_t> for_thread(int64_t i) const {
    Strided<acc_t> s = view;
    s.data = buffer.data_ptr<acc_t>() + i * extent;
    return s;
  }
  void reduce() {
    const int64_t threads = buffer.size(0);
    const acc_t* parts = buffer.data_ptr<acc_t>();
    acc_t* dst = view.data;
    const int64_t extent_ = extent;
    at::parallel_for(0, extent_, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t i = 0; i < threads; ++i)
        for (int64_t o = lo; o < hi; ++o) dst[o] += parts[i * extent_ + o];
    });
  }
};

inline int64_t team_size() { return std::max<int64_t>(1, at::get_num_threads()); }

inline int64_t thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

template <typename scalar_t, typename acc_t, typename Route>
void run_forward(const ScanViews<scalar_t, acc_t>& v, const Route& route) {
  const Engine<scalar_t, acc_t, Route> engine{v, route};
  const int64_t items = v.batch * v.channels, threads = team_size();
#pragma omp parallel num_threads(threads)
  {
    Workspace<acc_t> ws(v.dstate, 0);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item)
      for (int64_t k = 0; k < v.routes; ++k) engine.forward(ws, item / v.channels, k, item % v.channels);
  }
}

// B and C gradients need no partials when every group is one channel: then the item owns them.
inline bool owned_by_item(const at::Tensor& grad, int64_t channels, int64_t groups) {
  const bool distinct_batches = grad.size(0) == 1 || grad.stride(0) != 0;
  const bool distinct_groups = groups == 1 || grad.stride(2) != 0;
  return channels == groups && distinct_batches && distinct_groups;
}

template <typename scalar_t, typename acc_t, typename Route>
void run_backward(const ScanViews<scalar_t, acc_t>& v, const Route& route, const std::vector<at::Tensor>& dB,
                  const std::vector<at::Tensor>& dC, const at::Tensor& dA, const c10::optional<at::Tensor>& dD,
                  const c10::optional<at::Tensor>& dbias) {
  using E = Engine<scalar_t, acc_t, Route>;
  const E engine{v, route};
  const int64_t items = v.batch * v.channels, threads = team_size();
  const int64_t len = route.length(), chunks = (len + kChunk - 1) / kChunk;

  typename E::Sinks shared;               // the real gradient views
  std::vector<Partials<acc_t>> partials;  // per-thread copies of those items share
  std::vector<int> partial_slot;
  auto sink = [&](int slot, const at::Tensor& grad, bool owned) {
    shared.slot[slot] = strided<acc_t>(grad);
    if (owned) return;
    partials.emplace_back(grad, threads);
    partial_slot.push_back(slot);
  };
  for (size_t m = 0; m < dB.size(); ++m) {
    sink(E::kdB0 + m, dB[m], owned_by_item(dB[m], v.channels, v.groups_B));
    sink(E::kdC0 + m, dC[m], owned_by_item(dC[m], v.channels, v.groups_C));
  }
  sink(E::kdA, dA, false);
  if (dD) sink(E::kdD, *dD, false);
  if (dbias) sink(E::kdBias, *dbias, false);

#pragma omp parallel num_threads(threads)
  {
    const int64_t tid = thread_index();
    typename E::Sinks sinks = shared;
    for (size_t i = 0; i < partials.size(); ++i) sinks.slot[partial_slot[i]] = partials[i].for_thread(tid);
    Workspace<acc_t> ws(v.dstate, chunks);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item)
      for (int64_t k = 0; k < v.routes; ++k) engine.backward(ws, sinks, item / v.channels, k, item % v.channels);
  }
  for (auto& p : partials) p.reduce();
}

}  // namespace cpu
}  // namespace xscan
