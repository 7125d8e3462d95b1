// selective_scan with a complex A (mamba's complex mode), forward and backward on the CPU.
//
//   h_t = exp(dt_t A) h_t-1 + dt_t u_t B_t  (complex state of N per channel)
//   y_t = 2 Re(C_t . h_t) + D u_t, then y_t * silu(z_t)
//
// A rarely used mode: one channel at a time, std::complex arithmetic, no vectorisation. Work items
// are (batch, B/C group) pairs, so an item owns its dB and dC; dA, dD, d(delta_bias) go to
// per-batch partials summed afterwards in batch order (deterministic for any thread count).
// Inputs, as xscan/backends/cpu.py passes them: u, delta, z (Bt, Dm, L) and D, delta_bias (Dm,)
// real in the accumulation dtype; A (Dm, N), B, C (Bt, G, N, L) complex; G divides Dm.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>
#include <c10/util/complex.h>

#include <numeric>
#include <vector>

#include "xscan/scan_math.h"

namespace xscan {
namespace cpu {
namespace {

using OptTensor = c10::optional<at::Tensor>;
constexpr int64_t kChunk = 64;  // steps between stored states in the backward

template <typename T>
struct ComplexViews {
  using cplx = c10::complex<T>;
  int64_t Bt, Dm, L, N, GB, GC;
  at::TensorAccessor<T, 3> u, delta;
  const cplx* A;
  at::TensorAccessor<cplx, 4> B, C;
  const T *D, *bias;
  c10::optional<at::TensorAccessor<T, 3>> z;
  bool softplus;

  ComplexViews(const at::Tensor& u_, const at::Tensor& delta_, const at::Tensor& A_, const at::Tensor& B_,
               const at::Tensor& C_, const OptTensor& D_, const OptTensor& z_, const OptTensor& bias_, bool softplus_)
      : Bt(u_.size(0)), Dm(u_.size(1)), L(u_.size(2)), N(A_.size(1)), GB(B_.size(1)), GC(C_.size(1)),
        u(u_.accessor<T, 3>()), delta(delta_.accessor<T, 3>()), A(reinterpret_cast<const cplx*>(A_.data_ptr())),
        B(B_.accessor<cplx, 4>()), C(C_.accessor<cplx, 4>()), D(D_ ? D_->data_ptr<T>() : nullptr),
        bias(bias_ ? bias_->data_ptr<T>() : nullptr), softplus(softplus_) {
    const auto real = c10::CppTypeToScalarType<T>::value, complex = c10::toComplexType(real);
    TORCH_CHECK(
        delta_.scalar_type() == real && A_.scalar_type() == complex && B_.scalar_type() == complex &&
            C_.scalar_type() == complex && (!D_ || D_->scalar_type() == real) &&
            (!bias_ || bias_->scalar_type() == real) && (!z_ || z_->scalar_type() == real),
        "xscan._C: complex selective_scan takes real u, delta, z, D, delta_bias and complex A, B, C of one precision");
    TORCH_CHECK(A_.is_contiguous() && (!D_ || D_->is_contiguous()) && (!bias_ || bias_->is_contiguous()),
                "xscan._C: A, D, delta_bias must be contiguous");
    TORCH_CHECK(delta_.sizes() == u_.sizes() && A_.size(0) == Dm && B_.size(0) == Bt && C_.size(0) == Bt &&
                    B_.size(2) == N && C_.size(2) == N && B_.size(3) == L && C_.size(3) == L && Dm % GB == 0 &&
                    Dm % GC == 0 && (!D_ || D_->numel() == Dm) && (!bias_ || bias_->numel() == Dm),
                "xscan._C: inconsistent complex selective_scan shapes");
    if (z_) {
      TORCH_CHECK(z_->sizes() == u_.sizes(), "xscan._C: z must have u's shape");
      z = z_->accessor<T, 3>();
    }
  }

  // dt of channel d at time t (and d dt / d delta into dsp).
  T dt_at(int64_t b, int64_t d, int64_t t, T* dsp = nullptr) const {
    const T raw = delta[b][d][t] + (bias ? bias[d] : T(0));
    if (dsp) *dsp = step_size_grad(raw, T(0), softplus);
    return step_size(raw, T(0), softplus);
  }

  // One step of channel d at time t: h <- a h + dt u B; the decays go to `a` when given.
  void advance(int64_t b, int64_t d, int64_t t, T dt, cplx* h, cplx* a = nullptr) const {
    const int64_t gB = d / (Dm / GB);
    const T dtu = dt * u[b][d][t];
    for (int64_t n = 0; n < N; ++n) {
      const cplx decay = std::exp(cplx(dt) * A[d * N + n]);
      h[n] = decay * h[n] + dtu * B[b][gB][n][t];
      if (a) a[n] = decay;
    }
  }

  // 2 Re(C_t . h) + D u_t: the output before the gate.
  T readout(int64_t b, int64_t d, int64_t t, const cplx* h) const {
    const int64_t gC = d / (Dm / GC);
    T y = 0;
    for (int64_t n = 0; n < N; ++n) y += (C[b][gC][n][t] * h[n]).real();
    return T(2) * y + (D ? D[d] * u[b][d][t] : T(0));
  }
};

template <typename T>
void forward_impl(const ComplexViews<T>& v, at::Tensor& y, at::Tensor& last) {
  using cplx = c10::complex<T>;
  auto Y = y.accessor<T, 3>();
  cplx* last_state = reinterpret_cast<cplx*>(last.data_ptr());
  at::parallel_for(0, v.Bt * v.Dm, 1, [&](int64_t lo, int64_t hi) {
    std::vector<cplx> h(v.N);
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t b = item / v.Dm, d = item % v.Dm;
      std::fill(h.begin(), h.end(), cplx(0));
      for (int64_t t = 0; t < v.L; ++t) {
        v.advance(b, d, t, v.dt_at(b, d, t), h.data());
        T out = v.readout(b, d, t, h.data());
        if (v.z) out *= silu((*v.z)[b][d][t]);
        Y[b][d][t] = out;
      }
      std::copy(h.begin(), h.end(), last_state + item * v.N);
    }
  });
}

template <typename T>
void backward_impl(const ComplexViews<T>& v, const at::Tensor& dy_, const OptTensor& dlast_, at::Tensor& du_,
                   at::Tensor& ddelta_, at::Tensor& dA_part, at::Tensor& dB_, at::Tensor& dC_, at::Tensor& dD_part,
                   at::Tensor& dbias_part, OptTensor& dz_) {
  using cplx = c10::complex<T>;
  auto dy = dy_.accessor<T, 3>();
  auto du = du_.accessor<T, 3>();
  auto ddelta = ddelta_.accessor<T, 3>();
  auto dA = dA_part.accessor<cplx, 3>();
  auto dB = dB_.accessor<cplx, 4>();
  auto dC = dC_.accessor<cplx, 4>();
  auto dD = dD_part.accessor<T, 2>();
  auto dbias = dbias_part.accessor<T, 2>();
  const cplx* dlast = dlast_ ? reinterpret_cast<const cplx*>(dlast_->data_ptr()) : nullptr;
  T* dz = dz_ ? dz_->data_ptr<T>() : nullptr;  // contiguous (Bt, Dm, L)
  const int64_t N = v.N, L = v.L, chunks = (L + kChunk - 1) / kChunk;
  // An item is a batch and whole groups of both B and C: it owns their slices of dB and dC.
  const int64_t per_item = std::lcm(v.Dm / v.GB, v.Dm / v.GC), items = v.Bt * (v.Dm / per_item);
  at::parallel_for(0, items, 1, [&](int64_t lo, int64_t hi) {
    std::vector<cplx> h(N), starts(chunks * N), states((kChunk + 1) * N), decays(kChunk * N), g(N);
    std::vector<T> dts(kChunk), dsps(kChunk);
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t b = item / (v.Dm / per_item), d0 = (item % (v.Dm / per_item)) * per_item;
      for (int64_t d = d0; d < d0 + per_item; ++d) {
        const int64_t gB = d / (v.Dm / v.GB), gC = d / (v.Dm / v.GC);
        std::fill(h.begin(), h.end(), cplx(0));
        for (int64_t ch = 0; ch < chunks; ++ch) {
          std::copy(h.begin(), h.end(), starts.begin() + ch * N);
          for (int64_t t = ch * kChunk; t < std::min(L, (ch + 1) * kChunk); ++t)
            v.advance(b, d, t, v.dt_at(b, d, t), h.data());
        }
        for (int64_t n = 0; n < N; ++n) g[n] = dlast ? dlast[(b * v.Dm + d) * N + n] : cplx(0);
        T dD_sum = 0, dbias_sum = 0;
        for (int64_t ch = chunks - 1; ch >= 0; --ch) {
          const int64_t t0 = ch * kChunk, n_steps = std::min(kChunk, L - t0);
          // states[i] = h_{t0 + i - 1}: the chunk's start, then every step's state
          std::copy(starts.begin() + ch * N, starts.begin() + (ch + 1) * N, states.begin());
          for (int64_t i = 0; i < n_steps; ++i) {
            std::copy(states.begin() + i * N, states.begin() + (i + 1) * N, states.begin() + (i + 1) * N);
            dts[i] = v.dt_at(b, d, t0 + i, &dsps[i]);
            v.advance(b, d, t0 + i, dts[i], &states[(i + 1) * N], &decays[i * N]);
          }
          for (int64_t i = n_steps - 1; i >= 0; --i) {
            const int64_t t = t0 + i;
            const cplx* ht = &states[(i + 1) * N];
            const cplx* hp = &states[i * N];
            const T dt = dts[i], u = v.u[b][d][t];
            T gy = dy[b][d][t];
            if (v.z) {
              const T zv = (*v.z)[b][d][t];
              dz[(b * v.Dm + d) * L + t] = gy * v.readout(b, d, t, ht) * silu_grad(zv);
              gy *= silu(zv);
            }
            dD_sum += gy * u;
            T du_t = v.D ? gy * v.D[d] : T(0), ddt = 0;
            for (int64_t n = 0; n < N; ++n) {
              const cplx Bn = v.B[b][gB][n][t], Cn = v.C[b][gC][n][t], a = decays[i * N + n];
              g[n] += T(2) * gy * std::conj(Cn);
              dC[b][gC][n][t] += T(2) * gy * std::conj(ht[n]);
              dB[b][gB][n][t] += dt * u * g[n];
              du_t += dt * (std::conj(Bn) * g[n]).real();
              const cplx decay_term = a * hp[n];  // a_t h_{t-1}
              ddt += (std::conj(v.A[d * N + n] * decay_term + u * Bn) * g[n]).real();
              dA[b][d][n] += std::conj(dt * decay_term) * g[n];
              g[n] = std::conj(a) * g[n];
            }
            const T draw = ddt * dsps[i];
            ddelta[b][d][t] = draw;
            dbias_sum += draw;
            du[b][d][t] = du_t;
          }
        }
        dD[b][d] = dD_sum;
        dbias[b][d] = dbias_sum;
      }
    }
  });
}

}  // namespace

// y (Bt, Dm, L) and last_state (Bt, Dm, N) are written (fp32/fp64 real and complex).
void complex_scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                          const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& bias,
                          bool softplus, at::Tensor y, at::Tensor last_state) {
  TORCH_CHECK(y.sizes() == u.sizes() && last_state.is_contiguous() &&
                  last_state.sizes() == at::IntArrayRef({u.size(0), u.size(1), A.size(1)}) &&
                  last_state.scalar_type() == A.scalar_type(),
              "xscan._C: complex selective_scan output buffers do not match the inputs");
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "xscan_complex_scan_forward", [&] {
    const ComplexViews<scalar_t> v(u, delta, A, B, C, D, z, bias, softplus);
    forward_impl(v, y, last_state);
  });
}

// Every gradient buffer is written whole; dA, dD, d(delta_bias) per batch (summed by the caller).
void complex_scan_backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                           const at::Tensor& C, const OptTensor& D, const OptTensor& z, const OptTensor& bias,
                           bool softplus, const at::Tensor& dy, const OptTensor& dlast, at::Tensor du,
                           at::Tensor ddelta, at::Tensor dA_part, at::Tensor dB, at::Tensor dC, at::Tensor dD_part,
                           at::Tensor dbias_part, OptTensor dz) {
  const auto Bt = u.size(0), Dm = u.size(1), N = A.size(1);
  TORCH_CHECK(dy.sizes() == u.sizes() && du.sizes() == u.sizes() && ddelta.sizes() == u.sizes() &&
                  dB.sizes() == B.sizes() && dC.sizes() == C.sizes() &&
                  dA_part.sizes() == at::IntArrayRef({Bt, Dm, N}) && dD_part.sizes() == at::IntArrayRef({Bt, Dm}) &&
                  dbias_part.sizes() == at::IntArrayRef({Bt, Dm}),
              "xscan._C: complex selective_scan gradient buffers do not match the inputs");
  TORCH_CHECK(!dlast || (dlast->is_contiguous() && dlast->sizes() == at::IntArrayRef({Bt, Dm, N}) &&
                         dlast->scalar_type() == A.scalar_type()),
              "xscan._C: dlast must be a contiguous (Bt, Dm, N) tensor of A's dtype");
  TORCH_CHECK(!dz || (dz->is_contiguous() && dz->sizes() == u.sizes()), "xscan._C: dz must be contiguous like u");
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "xscan_complex_scan_backward", [&] {
    const ComplexViews<scalar_t> v(u, delta, A, B, C, D, z, bias, softplus);
    backward_impl(v, dy, dlast, du, ddelta, dA_part, dB, dC, dD_part, dbias_part, dz);
  });
}

}  // namespace cpu
}  // namespace xscan
