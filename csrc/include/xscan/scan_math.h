// The maths every xscan kernel shares (CPU C++ and CUDA): discretisation, gating, and the index maths
// that turns a scan position into the token it reads, so that no backend materialises flipped,
// transposed, interleaved or realigned copies (routes.h builds the route policies on it). Plain
// C++17, no torch/ATen: include it from .cpp and .cu files alike. The index maths is a template on
// the index type (routes.h). The definitions mirror xscan/routes.py and the reference ops
// (docs/ops.md); the tests compare every backend against those.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define XSCAN_HD __host__ __device__ __forceinline__
#else
#define XSCAN_HD inline
#endif

#ifdef XSCAN_HOST_EXPF
// The host emulation of the CUDA kernels (tests/backends/cuda_emulator) builds every file with
// -DXSCAN_HOST_EXPF=<its model of __expf> and -DXSCAN_HOST_EXP2F=<its model of exp2f under
// --use_fast_math>, defined there.
float XSCAN_HOST_EXPF(float x);
float XSCAN_HOST_EXP2F(float x);
#endif

namespace xscan {

// ---------------------------------------------------------------------------------------------
// Elementary functions, overloaded for float and double (the accumulation types).

XSCAN_HD float exp_acc(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#elif defined(XSCAN_HOST_EXPF)
  return XSCAN_HOST_EXPF(x);
#else
  return std::exp(x);
#endif
}
XSCAN_HD double exp_acc(double x) { return std::exp(x); }

// 2^x in the kernels' accuracy: ex2.approx on the GPU (exp2f under --use_fast_math).
XSCAN_HD float exp2_acc(float x) {
#if defined(__CUDA_ARCH__)
  return exp2f(x);
#elif defined(XSCAN_HOST_EXPF)
  return XSCAN_HOST_EXP2F(x);
#else
  return std::exp2(x);
#endif
}
XSCAN_HD float log1p_acc(float x) { return log1pf(x); }
XSCAN_HD double log1p_acc(double x) { return std::log1p(x); }

// torch.nn.functional.softplus with beta=1, threshold=20 (what mamba and the reference use).
template <typename T>
XSCAN_HD T softplus(T x) {
  return x > T(20) ? x : log1p_acc(exp_acc(x));
}

// d softplus(x) / dx = sigmoid(x), 1 above the threshold.
template <typename T>
XSCAN_HD T softplus_grad(T x) {
  return x > T(20) ? T(1) : T(1) / (T(1) + exp_acc(-x));
}

template <typename T>
XSCAN_HD T sigmoid(T x) {
  return T(1) / (T(1) + exp_acc(-x));
}

// silu(z) = z * sigmoid(z): the output gate of selective_scan.
template <typename T>
XSCAN_HD T silu(T z) {
  return z * sigmoid(z);
}

// d silu(z) / dz = sigmoid(z) * (1 + z * (1 - sigmoid(z))).
template <typename T>
XSCAN_HD T silu_grad(T z) {
  const T s = sigmoid(z);
  return s * (T(1) + z * (T(1) - s));
}

// ---------------------------------------------------------------------------------------------
// Discretisation (zero-order hold of A, Euler for B, as in Mamba):
//   dt = softplus?(delta + delta_bias);  h_t = exp(dt A) h_{t-1} + dt B_t u_t.

// The step size from the raw delta (bias already known: pass 0 when absent).
template <typename T>
XSCAN_HD T step_size(T delta, T delta_bias, bool delta_softplus) {
  const T raw = delta + delta_bias;
  return delta_softplus ? softplus(raw) : raw;
}

// d dt / d delta at the raw value delta + delta_bias.
template <typename T>
XSCAN_HD T step_size_grad(T delta, T delta_bias, bool delta_softplus) {
  return delta_softplus ? softplus_grad(delta + delta_bias) : T(1);
}

// exp(dt * A[n]): the state decay of one step.
template <typename T>
XSCAN_HD T decay(T dt, T a) {
  return exp_acc(dt * a);
}

// Vectorisable exp for float (CPU inner loops over N: std::exp does not vectorise without
// -ffast-math). exp(x) = 2^k * exp(r), |r| <= ln2/2, exp(r) by Cephes' degree-7 polynomial: relative
// error below 2e-7 on [-87, 88]. The polynomial runs on the input clamped to that range (exp(-87) =
// 1.6e-38 stands for the decay of a long step); the result keeps std::exp's edges: +inf above the
// float range, NaN for NaN. Branch-free so that loops calling it vectorise.
XSCAN_HD float exp_poly(float x) {
  // NaN compares false and clamps to -87 here: the conversion to int below stays defined
  const float c = x > -87.0f ? (x < 88.0f ? x : 88.0f) : -87.0f;
  // k = round(c / ln2) by the 1.5 * 2^23 trick (std::floor does not vectorise without -ffast-math)
  const float k = (c * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = c - k * 0.693359375f + k * 2.12194440e-4f;  // ln2 split in two for exact k*ln2
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^k from the float's exponent field (k in [-126, 127] after the clamp)
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
#ifdef __CUDA_ARCH__
  const float e = p * __int_as_float(bits);
#else
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const float e = p * scale;
#endif
  return x > 88.7228391f ? INFINITY : (x == x ? e : x);
}
XSCAN_HD double exp_poly(double x) { return std::exp(x); }

// log(1 + e) for e in [0, 1], vectorisable: 2 atanh(s) with s = e / (2 + e) in [0, 1/3], by its
// odd series to s^15 (truncation below 2e-9).
XSCAN_HD float log1p_unit(float e) {
  const float s = e / (2.0f + e), s2 = s * s;
  float p = 1.0f / 15.0f;
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  return 2.0f * s * (p * s2 + 1.0f);
}
XSCAN_HD double log1p_unit(double e) { return std::log1p(e); }

// softplus and sigmoid through exp_poly and log1p_unit (same values as softplus() and sigmoid()
// to float rounding), for loops the compiler should vectorise.
template <typename T>
XSCAN_HD T softplus_vec(T x) {
  const T pos = x > T(0) ? x : T(0), neg = x > T(0) ? -x : x;  // x = pos + neg, neg <= 0
  return x > T(20) ? x : pos + log1p_unit(exp_poly(neg));
}
template <typename T>
XSCAN_HD T sigmoid_vec(T x) {
  return T(1) / (T(1) + exp_poly(-x));
}

// ---------------------------------------------------------------------------------------------
// Routes over an H x W map (row-major spatial index s = h * W + w).

// A divisor fixed before a launch (a map's height or width, a route count): n / d and n % d for
// 0 <= n < 2^31 without a division, as the CUDA kernels' route policies locate every position with
// it: q = (mulhi(m, n) + n) >> l, with l = ceil(log2 d) and m = floor(2^32 (2^l - d) / d) + 1 (the
// round-up method of Granlund and Montgomery; mulhi(m, n) + n stays below 2^32 for n < 2^31).
// Converts to its value for every other use. The CPU engine divides 64-bit indices by plain integers.
struct FastDivisor {
  int32_t d;
  uint32_t m;
  int32_t l;
  XSCAN_HD FastDivisor(int32_t divisor = 1) : d(divisor), m(0), l(0) {
    while ((int64_t{1} << l) < divisor) ++l;
    m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << l) - static_cast<uint64_t>(divisor))) /
                                  static_cast<uint64_t>(divisor) +
                              1);
  }
  XSCAN_HD operator int32_t() const { return d; }
};

XSCAN_HD int32_t operator/(int32_t n, FastDivisor q) {
#ifdef __CUDA_ARCH__
  const uint32_t high = __umulhi(q.m, static_cast<uint32_t>(n));
#else
  const uint32_t high = static_cast<uint32_t>((static_cast<uint64_t>(q.m) * static_cast<uint32_t>(n)) >> 32);
#endif
  return static_cast<int32_t>((high + static_cast<uint32_t>(n)) >> q.l);
}
XSCAN_HD int32_t operator%(int32_t n, FastDivisor q) { return n - (n / q) * q.d; }

// The cell (row r, column c) at index i of a rows x cols grid walked row by row (by_columns false)
// or column by column: one division, by the length of a line of the walk (a select, no branch).
template <typename I, typename D>
XSCAN_HD void grid_cell(bool by_columns, I i, D rows, D cols, I* r, I* c) {
  const D line = by_columns ? rows : cols;
  const I outer = i / line, inner = i - outer * static_cast<I>(line);
  *r = by_columns ? inner : outer;
  *c = by_columns ? outer : inner;
}

// SS2D route k in VMamba order (0 hf row-major, 1 vf column-major, 2 hb, 3 vb reversed): the
// spatial index visited at route position j in [0, H*W). D: the divisors' type (I, or FastDivisor).
// (Two divisions where grid_cell would take one, but its select of the divisor costs registers
// that put interleave_ss2d's kernels past sm_80's register file.)
template <typename I, typename D>
XSCAN_HD I cross_route(I k, I j, D H, D W) {
  const I i = k >= 2 ? H * W - 1 - j : j;
  return (k & 1) ? (i % H) * W + i / H : i;
}

// How route k's tokens follow its positions: the row routes walk them in order, forwards (k = 0: +1)
// or backwards (k = 2: -1); the column routes jump (0).
template <typename I>
XSCAN_HD int cross_token_step(I k) {
  return k & 1 ? 0 : k >= 2 ? -1 : 1;
}

// ES2D (atrous) sub-lattice size of an H x W map zero-padded to even H and W.
template <typename I>
XSCAN_HD I atrous_extent(I n) {
  return (n + 1) / 2;
}

// ES2D route k: origin (h0, w0) of its stride-2 sub-lattice and whether it walks column-major.
// k = 0 (0,0) row-major, 1 (1,0) column-major, 2 (0,1) row-major, 3 (1,1) column-major.
template <typename I>
XSCAN_HD I atrous_h0(I k) {
  return k & 1;
}
template <typename I>
XSCAN_HD I atrous_w0(I k) {
  return k >> 1;
}
template <typename I>
XSCAN_HD bool atrous_column_major(I k) {
  return (k & 1) != 0;
}

// ES2D route k at position j in [0, Hq*Wq): its token q (the cell's index in the sub-lattice
// row-major, the order of es2d's per-token tensors) and its pixel (h, w) of the map padded to even
// H, W. Returns false for padding (h >= H or w >= W): the scan reads u = 0 there and its output is
// dropped.
template <typename I, typename D>
XSCAN_HD bool atrous_pixel(I k, I j, I H, I W, D Hq, D Wq, I* q, I* h, I* w) {
  I i, c;
  grid_cell<I, D>(atrous_column_major(k), j, Hq, Wq, &i, &c);
  *q = i * Wq + c;
  *h = 2 * i + atrous_h0(k);
  *w = 2 * c + atrous_w0(k);
  return *h < H && *w < W;
}

// cross_ss2d route position p in [0, 2L): modality p % 2 at the route's (p / 2)-th token, so route k
// reads I_1, V_1, I_2, V_2, ... (modality 0 first in every pair, also on the reversed routes).
template <typename I>
XSCAN_HD int cross_pair_modality(I p) {
  return static_cast<int>(p & 1);
}

// ---------------------------------------------------------------------------------------------
// DIFF-MF realignment (docs/ops.md, "interleave_ss2d"): the realigned map R of two (C, H, W) maps
// M_0, M_1, named by xscan.spec.Source (routes.h):
//   channel column (1): R is (2C, H, W), channel r = 2c + m;   channel halves (2): r = m * C + c;
//   width column (3):   R is (C, H, 2W), column r = 2w + m;    width halves (4):   r = m * W + w.

// Each source kind splits one realigned coordinate x (the channel r on the channel axis, the column
// wr on the width) as x = (2 hi + m) * period + lo, with m the map and hi * period + lo the index
// read in it: the column kinds interleave (period 1: x = 2 i + m), the halves kinds concatenate
// (period C or W: x = m * period + i). One division, no branch on the kind.
template <typename I>
struct RealignSource {
  int m;   // which map, 0 or 1
  I c, w;  // its channel and column (the row is the realigned row)
};

XSCAN_HD bool realigns_channels(int32_t source) { return source == 1 || source == 2; }

// The period of source kind `source` over (C, H, W) input maps.
template <typename I>
XSCAN_HD I realign_period(int32_t source, I C, I W) {
  return source == 1 || source == 3 ? I(1) : (source == 2 ? C : W);
}

// Realigned channel r and column wr -> the map, channel and column they are read from.
template <typename I, typename D>
XSCAN_HD RealignSource<I> realign_source(bool on_channels, D period, I r, I wr) {
  const I x = on_channels ? r : wr;
  const I q = x / period, lo = x - q * period;
  const I i = (q >> 1) * period + lo;
  return RealignSource<I>{static_cast<int>(q & 1), on_channels ? i : r, on_channels ? wr : i};
}

}  // namespace xscan
