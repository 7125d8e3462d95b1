// Standalone harness (no torch) for GPGPU-Sim: xscan's scan kernels (csrc/cuda/scan_kernel.cuh)
// against mamba-ssm's selective-scan kernels (mamba_kernels.cu), on the same random inputs (fixed
// seed), each output and gradient checked against a CPU double-precision loop.
//
//   harness [--case NAME]... [--Bt n] [--Dm n] [--L n] [--H n] [--W n] [--N n] [--plan-sms n]
//           [--impl both|xscan|mamba] [--no-check]
//
// Cases: ss_fwd, ss_fwd_noz, ss_fwdbwd, ss_fwdbwd_noz (selective_scan, (Bt, Dm, L), B/C (Bt, 1, N, L),
// delta_bias + softplus, D, z or not); cross_fwd, cross_fwdbwd (cross_ss2d over two H x W maps:
// xscan's CROSS_PAIR route vs the public networks' way, interleaved copies + mamba's kernel over 2L
// + recover); ss2d_fwd, ss2d_fwdbwd (ss2d over one H x W map: xscan's CROSS route, its four routes
// summed into y; xscan only, to set beside selective_scan's counts per element). --plan-sms: the SM
// count xscan's launch plan (sequence split) assumes; 0 = no split, default the device's.
//
// Output lines for run.py: "@@begin CASE IMPL" / "@@end CASE IMPL" around the launches of one
// implementation (the simulator prints its per-kernel statistics in between), "@@elements CASE n"
// (channel x position x state), "@@err CASE IMPL TENSOR rel" (max |got - ref| / max |ref|).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "scan_kernel.cuh"   // xscan (csrc/cuda)
#include "selective_scan.h"  // mamba's SSMParamsBase / SSMParamsBwd (plain structs)
#include "xscan_plan.h"

template <typename input_t, typename weight_t>
void selective_scan_fwd_cuda(SSMParamsBase& params, cudaStream_t stream);
template <typename input_t, typename weight_t>
void selective_scan_bwd_cuda(SSMParamsBwd& params, cudaStream_t stream);

#define CHECK(x)                                                                                    \
  do {                                                                                              \
    cudaError_t e_ = (x);                                                                           \
    if (e_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(2);                                                                                 \
    }                                                                                               \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Device memory, zeroed; freed at exit.
static std::vector<void*> g_allocs;
static float* dalloc(size_t floats) {
  void* p = nullptr;
  CHECK(cudaMalloc(&p, std::max<size_t>(floats, 1) * sizeof(float)));
  CHECK(cudaMemset(p, 0, std::max<size_t>(floats, 1) * sizeof(float)));
  g_allocs.push_back(p);
  return static_cast<float*>(p);
}
static float* upload(const std::vector<float>& h) {
  float* d = dalloc(h.size());
  CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
  return d;
}
static std::vector<float> download(const float* d, size_t n) {
  std::vector<float> h(n);
  CHECK(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}
static void zero(float* d, size_t n) { CHECK(cudaMemset(d, 0, n * sizeof(float))); }

// ---------------------------------------------------------------------------------------------
// Inputs: fixed seed.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  double next() {  // splitmix64 -> [0, 1)
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return double((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
  }
  float uniform(double lo, double hi) { return float(lo + (hi - lo) * next()); }
};

struct HostInputs {
  std::vector<float> u, z, dt, B, C, A, D, bias, dout;
};

static size_t n_u(const Problem& p) { return size_t(p.M) * p.Bt * p.Dm * p.T; }
static size_t n_z(const Problem& p) { return size_t(p.Bt) * p.Dm * p.T; }
static size_t n_dt(const Problem& p) { return size_t(p.M) * p.Bt * p.K * p.Dm * p.T; }
static size_t n_bc(const Problem& p) { return size_t(p.Bt) * p.K * p.N * p.M * p.T; }
static size_t n_a(const Problem& p) { return size_t(p.K) * p.Dm * p.N; }
static size_t n_d(const Problem& p) { return size_t(p.K) * p.Dm; }

static HostInputs make_inputs(const Problem& p, uint64_t seed) {
  Rng r(seed);
  HostInputs in;
  auto fill = [&](std::vector<float>& v, size_t n, double lo, double hi) {
    v.resize(n);
    for (auto& x : v) x = r.uniform(lo, hi);
  };
  fill(in.u, n_u(p), -1, 1);
  fill(in.z, p.has_z ? n_z(p) : 0, -2, 2);
  fill(in.dt, n_dt(p), -3, -1);  // softplus(dt + bias) in ~[0.03, 0.5]
  fill(in.B, n_bc(p), -1, 1);
  fill(in.C, n_bc(p), -1, 1);
  in.A.resize(n_a(p));
  for (size_t i = 0; i < in.A.size(); ++i) in.A[i] = -float(i % p.N + 1) * r.uniform(0.5, 1.5);  // S4D-real-like
  fill(in.D, n_d(p), -1, 1);
  fill(in.bias, n_d(p), -0.5, 0.5);
  fill(in.dout, n_u(p), -1, 1);
  return in;
}

// ---------------------------------------------------------------------------------------------
// Routes, written here independently of xscan's headers: position p of route k -> (modality,
// spatial index). cross_ss2d: VMamba's routes (0 row-major, 1 column-major, 2 and 3 reversed),
// modality p % 2 at the route's (p / 2)-th pixel.
static inline __host__ __device__ int route_pixel(int k, int j, int H, int W) {
  const int i = k >= 2 ? H * W - 1 - j : j;
  if (k & 1) return (i % H) * W + i / H;  // i-th pixel column-major
  return i;
}
// the inverse: the position on route k of spatial pixel s
static inline __host__ __device__ int route_index(int k, int s, int H, int W) {
  const int i = (k & 1) ? (s % W) * H + s / W : s;
  return k >= 2 ? H * W - 1 - i : i;
}

// ---------------------------------------------------------------------------------------------
// CPU reference in double: forward (y) and backward (every gradient), same layouts as Problem.
struct Grads {
  std::vector<double> y, du, dz, ddt, dB, dC, dA, dD, dbias;
};

static Grads reference(const Problem& p, const HostInputs& in, bool backward) {
  const int64_t Bt = p.Bt, K = p.K, Dm = p.Dm, N = p.N, T = p.T, M = p.M, Lp = p.positions();
  Grads g;
  g.y.assign(n_u(p), 0);
  if (backward) {
    g.du.assign(n_u(p), 0), g.dz.assign(n_z(p), 0), g.ddt.assign(n_dt(p), 0);
    g.dB.assign(n_bc(p), 0), g.dC.assign(n_bc(p), 0), g.dA.assign(n_a(p), 0);
    g.dD.assign(n_d(p), 0), g.dbias.assign(n_d(p), 0);
  }
  std::vector<double> h((Lp + 1) * N), adj(N), ys(Lp);
  auto sigm = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  for (int64_t b = 0; b < Bt; ++b)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t d = 0; d < Dm; ++d) {
        const double Dd = in.D[k * Dm + d], bias = in.bias[k * Dm + d];
        const float* A = &in.A[(k * Dm + d) * N];
        auto loc = [&](int64_t pos, int64_t& m, int64_t& s) {
          if (p.op == 0) m = 0, s = pos;
          else if (p.op == 2) m = 0, s = route_pixel(int(k), int(pos), p.H, p.W);
          else m = pos & 1, s = route_pixel(int(k), int(pos >> 1), p.H, p.W);
        };
        auto at_u = [&](int64_t m, int64_t s) { return ((m * Bt + b) * Dm + d) * T + s; };
        auto at_dt = [&](int64_t m, int64_t s) { return (((m * Bt + b) * K + k) * Dm + d) * T + s; };
        auto at_bc = [&](int64_t m, int64_t n, int64_t s) { return ((b * K + k) * N + n) * M * T + m * T + s; };
        auto at_z = [&](int64_t s) { return (b * Dm + d) * T + s; };
        std::fill(h.begin(), h.begin() + N, 0.0);
        for (int64_t pos = 0; pos < Lp; ++pos) {
          int64_t m, s;
          loc(pos, m, s);
          const double raw = double(in.dt[at_dt(m, s)]) + bias;
          const double dt = p.softplus ? (raw > 20 ? raw : std::log1p(std::exp(raw))) : raw;
          const double u = in.u[at_u(m, s)];
          double y = Dd * u;
          for (int64_t n = 0; n < N; ++n) {
            const double hn = std::exp(dt * A[n]) * h[pos * N + n] + dt * in.B[at_bc(m, n, s)] * u;
            h[(pos + 1) * N + n] = hn;
            y += in.C[at_bc(m, n, s)] * hn;
          }
          ys[pos] = y;
          if (p.has_z) {
            const double z = in.z[at_z(s)];
            y *= z * sigm(z);
          }
          g.y[at_u(m, s)] += y;
        }
        if (!backward) continue;
        std::fill(adj.begin(), adj.end(), 0.0);
        for (int64_t pos = Lp - 1; pos >= 0; --pos) {
          int64_t m, s;
          loc(pos, m, s);
          const double raw = double(in.dt[at_dt(m, s)]) + bias;
          const double dt = p.softplus ? (raw > 20 ? raw : std::log1p(std::exp(raw))) : raw;
          const double u = in.u[at_u(m, s)];
          const double dout = in.dout[at_u(m, s)];
          double dy = dout;
          if (p.has_z) {
            const double z = in.z[at_z(s)], sg = sigm(z);
            dy = dout * z * sg;
            g.dz[at_z(s)] += dout * ys[pos] * sg * (1 + z * (1 - sg));
          }
          double du = Dd * dy, ddt = 0;
          g.dD[k * Dm + d] += dy * u;
          for (int64_t n = 0; n < N; ++n) {
            const double a = std::exp(dt * A[n]), Bn = in.B[at_bc(m, n, s)], Cn = in.C[at_bc(m, n, s)];
            const double prev = h[pos * N + n];
            g.dC[at_bc(m, n, s)] += dy * h[(pos + 1) * N + n];
            adj[n] += Cn * dy;
            du += adj[n] * dt * Bn;
            g.dB[at_bc(m, n, s)] += adj[n] * dt * u;
            ddt += adj[n] * (Bn * u + A[n] * a * prev);
            g.dA[(k * Dm + d) * N + n] += adj[n] * dt * a * prev;
            adj[n] *= a;
          }
          const double ddelta = p.softplus ? (raw > 20 ? ddt : ddt * sigm(raw)) : ddt;
          g.du[at_u(m, s)] += du;
          g.ddt[at_dt(m, s)] += ddelta;
          g.dbias[k * Dm + d] += ddelta;
        }
      }
  return g;
}

// ---------------------------------------------------------------------------------------------
// xscan: its launch sequence (run_forward / run_backward) through a StreamLaunch-like functor.
struct HarnessLaunch {
  cudaStream_t stream = 0;
  const char* error = "";
  int launches = 0;
  template <typename... Params, typename... Args>
  bool operator()(void (*kernel)(Params...), xscan::cuda::GridSize grid, size_t shared_bytes, const Args&... args) {
    if (shared_bytes > 48 * 1024) {
      cudaError_t err =
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared_bytes));
      if (err != cudaSuccess) return fail(err);
    }
    kernel<<<dim3(grid.x, grid.y, grid.z), xscan::cuda::kThreadsPerBlock, shared_bytes, stream>>>(args...);
    ++launches;
    cudaError_t err = cudaGetLastError();
    return err == cudaSuccess || fail(err);
  }
  bool fail(cudaError_t err) {
    error = cudaGetErrorString(err);
    return false;
  }
};

// ---------------------------------------------------------------------------------------------
// mamba: SSMParams of one selective_scan_fn call over (batch, dim, seqlen) with B, C (batch, groups,
// N, seqlen), all contiguous fp32 (what mamba's selective_scan.cpp set_ssm_params_* sets).
struct MambaCall {
  int batch, dim, seqlen, dstate, groups;
  bool softplus;
  float *u, *delta, *A, *B, *C, *D, *bias, *z;
  float *out, *out_z, *x;                                      // forward
  float *dout, *du, *ddelta, *dA, *dB, *dC, *dD, *dbias, *dz;  // backward
};

static int mamba_chunks(int seqlen) { return (seqlen + 2047) / 2048; }

static void mamba_fill(SSMParamsBase& P, const MambaCall& c) {
  std::memset(&P, 0, sizeof(P));
  P.batch = c.batch, P.dim = c.dim, P.seqlen = c.seqlen, P.dstate = c.dstate, P.n_groups = c.groups;
  P.n_chunks = mamba_chunks(c.seqlen);
  P.dim_ngroups_ratio = c.dim / c.groups;
  P.is_variable_B = P.is_variable_C = true;
  P.delta_softplus = c.softplus;
  P.A_d_stride = c.dstate, P.A_dstate_stride = 1;
  P.B_batch_stride = P.C_batch_stride = uint64_t(c.groups) * c.dstate * c.seqlen;
  P.B_group_stride = P.C_group_stride = uint64_t(c.dstate) * c.seqlen;
  P.B_dstate_stride = P.C_dstate_stride = c.seqlen;
  const uint64_t bs = uint64_t(c.dim) * c.seqlen, ds = c.seqlen;
  P.u_batch_stride = P.delta_batch_stride = P.out_batch_stride = bs;
  P.u_d_stride = P.delta_d_stride = P.out_d_stride = ds;
  P.A_ptr = c.A, P.B_ptr = c.B, P.C_ptr = c.C, P.D_ptr = c.D, P.u_ptr = c.u, P.delta_ptr = c.delta;
  P.delta_bias_ptr = c.bias, P.out_ptr = c.out, P.x_ptr = c.x;
  if (c.z) {
    P.z_ptr = c.z, P.out_z_ptr = c.out_z;
    P.z_batch_stride = P.out_z_batch_stride = bs;
    P.z_d_stride = P.out_z_d_stride = ds;
  }
}

static void mamba_forward(const MambaCall& c) {
  SSMParamsBase P;
  mamba_fill(P, c);
  selective_scan_fwd_cuda<float, float>(P, 0);
}

// selective_scan_fn's backward (recompute_out_z = false): dA, dB, dC, dD, dbias must be zeroed.
static void mamba_backward(const MambaCall& c) {
  SSMParamsBwd P;
  mamba_fill(P, c);
  P.out_z_ptr = nullptr;
  const uint64_t bs = uint64_t(c.dim) * c.seqlen, ds = c.seqlen;
  P.dout_ptr = c.dout, P.du_ptr = c.du, P.ddelta_ptr = c.ddelta, P.dA_ptr = c.dA, P.dB_ptr = c.dB, P.dC_ptr = c.dC;
  P.dD_ptr = c.dD, P.ddelta_bias_ptr = c.dbias, P.dz_ptr = c.z ? c.dz : nullptr;
  P.dout_batch_stride = P.du_batch_stride = P.ddelta_batch_stride = P.dz_batch_stride = bs;
  P.dout_d_stride = P.du_d_stride = P.ddelta_d_stride = P.dz_d_stride = ds;
  P.dA_d_stride = c.dstate, P.dA_dstate_stride = 1;
  P.dB_batch_stride = P.dC_batch_stride = uint64_t(c.groups) * c.dstate * c.seqlen;
  P.dB_group_stride = P.dC_group_stride = uint64_t(c.dstate) * c.seqlen;
  P.dB_dstate_stride = P.dC_dstate_stride = c.seqlen;
  selective_scan_bwd_cuda<float, float>(P, 0);
}

// ---------------------------------------------------------------------------------------------
// The public networks' cross_ss2d (S4Fusion FusionBlock.forward_core): interleaved route-order
// copies (Bt, K*Dm, 2L) of u, dt and (Bt, K, N, 2L) of B, C, mamba's scan over 2L, recover.
// One copy kernel per direction, each element written once (torch runs several copies).
struct Geo {
  int Bt, K, Dm, N, H, W, T;
};

// xs[b, k*Dm + d, p] = u_m[b, d, s]; dts[b, k*Dm+d, p] = dt_m[b, k, d, s]; Bs[b, k, n, p] = B_m[b, k, n, s]
__global__ void materialise_inputs(Geo g, const float* u, const float* dt, const float* B, const float* C, float* xs,
                                   float* dts, float* Bs, float* Cs) {
  const int64_t L2 = 2 * int64_t(g.T);
  const int64_t rows_x = int64_t(g.Bt) * g.K * g.Dm, rows_b = int64_t(g.Bt) * g.K * g.N;
  const int64_t total = (rows_x + rows_b) * L2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / L2;
    const int p = int(i % L2), m = p & 1;
    if (row < rows_x) {
      const int d = int(row % g.Dm), k = int(row / g.Dm % g.K), b = int(row / (int64_t(g.Dm) * g.K));
      const int s = route_pixel(k, p >> 1, g.H, g.W);
      xs[i] = u[((int64_t(m) * g.Bt + b) * g.Dm + d) * g.T + s];
      dts[i] = dt[(((int64_t(m) * g.Bt + b) * g.K + k) * g.Dm + d) * g.T + s];
    } else {
      const int64_t r = row - rows_x;  // (b, k, n)
      const int k = int(r / g.N % g.K);
      const int s = route_pixel(k, p >> 1, g.H, g.W);
      const int64_t src = r * 2 * g.T + int64_t(m) * g.T + s;
      Bs[r * L2 + p] = B[src];
      Cs[r * L2 + p] = C[src];
    }
  }
}

// recover: y_m[b, d, s] = sum_k out[b, k*Dm + d, 2 j_k(s) + m]  (also the backward's du from dxs)
__global__ void materialise_recover(Geo g, const float* out, float* y) {
  const int64_t total = 2 * int64_t(g.Bt) * g.Dm * g.T;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int s = int(i % g.T);
    const int64_t r = i / g.T;
    const int d = int(r % g.Dm), b = int(r / g.Dm % g.Bt), m = int(r / (int64_t(g.Dm) * g.Bt));
    float acc = 0.f;
    for (int k = 0; k < g.K; ++k)
      acc += out[((int64_t(b) * g.K + k) * g.Dm + d) * 2 * g.T + 2 * route_index(k, s, g.H, g.W) + m];
    y[i] = acc;
  }
}

// backward of recover: dfull[b, k*Dm + d, p] = dy_m[b, d, s]
__global__ void materialise_dout(Geo g, const float* dy, float* dfull) {
  const int64_t L2 = 2 * int64_t(g.T), total = int64_t(g.Bt) * g.K * g.Dm * L2;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / L2;
    const int p = int(i % L2), m = p & 1;
    const int d = int(row % g.Dm), k = int(row / g.Dm % g.K), b = int(row / (int64_t(g.Dm) * g.K));
    dfull[i] = dy[((int64_t(m) * g.Bt + b) * g.Dm + d) * g.T + route_pixel(k, p >> 1, g.H, g.W)];
  }
}

// backward of the copies: ddt_m[b, k, d, s] = ddts[b, k*Dm+d, 2 j_k(s) + m]; dB[b, k, n, m*T + s] = dBs[...]
__global__ void materialise_token_grads(Geo g, const float* ddts, const float* dBs, const float* dCs, float* ddt,
                                        float* dB, float* dC) {
  const int64_t rows_x = int64_t(g.Bt) * g.K * g.Dm, rows_b = int64_t(g.Bt) * g.K * g.N;
  const int64_t total = (rows_x + rows_b) * 2 * g.T;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int s = int(i % g.T);
    const int64_t r = i / g.T;
    if (r < 2 * rows_x) {  // (m, b, k, d)
      const int64_t row = r % rows_x;
      const int m = int(r / rows_x), k = int(row / g.Dm % g.K);
      ddt[i] = ddts[row * 2 * g.T + 2 * route_index(k, s, g.H, g.W) + m];
    } else {  // (b, k, n, m)
      const int64_t rb = r - 2 * rows_x, row = rb / 2;
      const int m = int(rb % 2), k = int(row / g.N % g.K);
      const int64_t at = row * 2 * g.T + 2 * route_index(k, s, g.H, g.W) + m;
      dB[row * 2 * g.T + int64_t(m) * g.T + s] = dBs[at];
      dC[row * 2 * g.T + int64_t(m) * g.T + s] = dCs[at];
    }
  }
}

static int grid_for(int64_t n) { return int(std::min<int64_t>((n + 255) / 256, 1024)); }

// ---------------------------------------------------------------------------------------------
struct Case {
  std::string name;
  int op;
  bool z, backward;
};

static double max_rel(const std::vector<float>& got, const std::vector<double>& ref) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    scale = std::max(scale, std::fabs(ref[i]));
    const double e = std::fabs(double(got[i]) - ref[i]);
    err = std::max(err, std::isfinite(e) ? e : INFINITY);
  }
  return scale > 0 ? err / scale : err;
}

static void report(const Case& c, const char* impl, const char* tensor, const std::vector<float>& got,
                   const std::vector<double>& ref) {
  std::printf("@@err %s %s %s %.3e\n", c.name.c_str(), impl, tensor, max_rel(got, ref));
}

static void sync_print(const char* what, const Case& c, const char* impl) {
  CHECK(cudaDeviceSynchronize());
  std::printf("@@%s %s %s\n", what, c.name.c_str(), impl);
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  std::vector<std::string> wanted;
  int Bt = 1, Dm = 32, L = 1024, H = 16, W = 16, N = 16, plan_sms = -1;
  std::string impl = "both";
  bool check = true, deterministic = false, recompute_states = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", a.c_str());
        std::exit(1);
      }
      return argv[++i];
    };
    if (a == "--case") wanted.push_back(next());
    else if (a == "--Bt") Bt = std::atoi(next());
    else if (a == "--Dm") Dm = std::atoi(next());
    else if (a == "--L") L = std::atoi(next());
    else if (a == "--H") H = std::atoi(next());
    else if (a == "--W") W = std::atoi(next());
    else if (a == "--N") N = std::atoi(next());
    else if (a == "--plan-sms") plan_sms = std::atoi(next());
    else if (a == "--impl") impl = next();
    else if (a == "--no-check") check = false;
    else if (a == "--deterministic") deterministic = true;  // xscan: per-tile dB, dC partials, no atomics
    // xscan: the backward reruns the forward to save the chunk states (a backward without checkpoints)
    else if (a == "--recompute-states") recompute_states = true;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 1;
    }
  }
  const std::vector<Case> all = {{"ss_fwd", 0, true, false},     {"ss_fwd_noz", 0, false, false},
                                 {"ss_fwdbwd", 0, true, true},   {"ss_fwdbwd_noz", 0, false, true},
                                 {"cross_fwd", 1, false, false}, {"cross_fwdbwd", 1, false, true},
                                 {"ss2d_fwd", 2, false, false},  {"ss2d_fwdbwd", 2, false, true}};
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  if (plan_sms < 0) plan_sms = prop.multiProcessorCount;
  std::printf("@@device %s sms %d plan_sms %d\n", prop.name, prop.multiProcessorCount, plan_sms);

  for (const Case& c : all) {
    if (!wanted.empty() && std::find(wanted.begin(), wanted.end(), c.name) == wanted.end()) continue;
    Problem p;
    p.op = c.op, p.Bt = Bt, p.Dm = Dm, p.N = N, p.has_z = c.z, p.softplus = true;
    if (c.op == 0) p.K = 1, p.M = 1, p.H = 1, p.W = L, p.T = L;
    else p.K = 4, p.M = c.op == 1 ? 2 : 1, p.H = H, p.W = W, p.T = H * W;
    const HostInputs in = make_inputs(p, 26 + c.op);
    const int64_t elements = int64_t(p.Bt) * p.K * p.Dm * p.positions() * p.N;
    std::printf("@@elements %s %lld Bt=%d K=%d Dm=%d positions=%lld N=%d\n", c.name.c_str(), (long long)elements, p.Bt,
                p.K, p.Dm, (long long)p.positions(), p.N);
    Grads ref;
    if (check) ref = reference(p, in, c.backward);

    DeviceTensors t;
    t.u = upload(in.u), t.dt = upload(in.dt), t.B = upload(in.B), t.C = upload(in.C), t.A = upload(in.A);
    t.D = upload(in.D), t.bias = upload(in.bias), t.z = c.z ? upload(in.z) : nullptr, t.dout = upload(in.dout);
    t.y = dalloc(n_u(p));
    if (c.backward) {
      t.du = dalloc(n_u(p)), t.ddt = dalloc(n_dt(p)), t.dB = dalloc(n_bc(p)), t.dC = dalloc(n_bc(p));
      t.dz = c.z ? dalloc(n_z(p)) : nullptr;
    }
    auto zero_outputs = [&]() {
      zero(t.y, n_u(p));
      if (c.backward) zero(t.du, n_u(p)), zero(t.ddt, n_dt(p)), zero(t.dB, n_bc(p)), zero(t.dC, n_bc(p));
      if (c.backward && t.dz) zero(t.dz, n_z(p));
    };
    auto check_outputs = [&](const char* who, const std::vector<double>* dA, const std::vector<double>* dD,
                             const std::vector<double>* dbias) {
      if (!check) return;
      report(c, who, "y", download(t.y, n_u(p)), ref.y);
      if (!c.backward) return;
      report(c, who, "du", download(t.du, n_u(p)), ref.du);
      report(c, who, "ddelta", download(t.ddt, n_dt(p)), ref.ddt);
      report(c, who, "dB", download(t.dB, n_bc(p)), ref.dB);
      report(c, who, "dC", download(t.dC, n_bc(p)), ref.dC);
      if (c.z) report(c, who, "dz", download(t.dz, n_z(p)), ref.dz);
      auto to_f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
      report(c, who, "dA", to_f(*dA), ref.dA);
      report(c, who, "dD", to_f(*dD), ref.dD);
      report(c, who, "ddelta_bias", to_f(*dbias), ref.dbias);
    };

    if (impl == "both" || impl == "xscan") {
      zero_outputs();
      XscanScratch fs, bs;
      auto Pf = xscan_params(p, t, false, plan_sms, dalloc, &fs);
      auto Pb = c.backward ? xscan_params(p, t, true, plan_sms, dalloc, &bs, deterministic) : Pf;
      if (c.backward && !recompute_states) mark_states_saved(Pf, Pb, 0);  // as autograd: the forward saves them
      std::printf("@@plan %s xscan fwd: %s\n", c.name.c_str(), describe_layout(Pf).c_str());
      if (c.backward) std::printf("@@plan %s xscan_bwd bwd: %s\n", c.name.c_str(), describe_layout(Pb).c_str());
      sync_print("begin", c, "xscan");
      HarnessLaunch launch;
      xscan::cuda::run_forward<float>(Pf, launch);
      if (c.backward) xscan::cuda::run_backward<float>(Pb, launch);
      if (*launch.error) {
        std::fprintf(stderr, "xscan launch failed: %s\n", launch.error);
        return 2;
      }
      sync_print("end", c, "xscan");
      if (c.backward && deterministic) {
        const size_t n = size_t(p.Bt) * p.K * bs.tiles * p.N * p.M * p.T;
        const auto sB = xscan_sum_tiles(p, bs, download(bs.dB_tiles, n)),
                   sC = xscan_sum_tiles(p, bs, download(bs.dC_tiles, n));
        CHECK(cudaMemcpy(t.dB, sB.data(), sB.size() * sizeof(float), cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(t.dC, sC.data(), sC.size() * sizeof(float), cudaMemcpyHostToDevice));
      }
      std::vector<double> dA, dD, dbias;
      if (c.backward)
        xscan_sum_partials(p, Pb, download(bs.dA_part, bs.partial_rows * p.N), download(bs.dD_part, bs.partial_rows),
                           download(bs.dbias_part, bs.partial_rows), dA, dD, dbias);
      check_outputs("xscan", &dA, &dD, &dbias);
    }

    if ((impl == "both" || impl == "mamba") && c.op != 2) {
      zero_outputs();
      float* dA = c.backward ? dalloc(n_a(p)) : nullptr;
      float* dD = c.backward ? dalloc(n_d(p)) : nullptr;
      float* dbias = c.backward ? dalloc(n_d(p)) : nullptr;
      MambaCall m{};
      m.dstate = p.N, m.softplus = p.softplus, m.A = t.A, m.D = t.D, m.bias = t.bias;
      m.dA = dA, m.dD = dD, m.dbias = dbias;
      if (c.op == 0) {
        m.batch = p.Bt, m.dim = p.Dm, m.seqlen = p.T, m.groups = 1;
        m.u = t.u, m.delta = t.dt, m.B = t.B, m.C = t.C, m.z = t.z;
        m.out = c.z ? dalloc(n_u(p)) : t.y, m.out_z = c.z ? t.y : nullptr;
        m.x = dalloc(size_t(p.Bt) * p.Dm * mamba_chunks(p.T) * p.N * 2);
        m.dout = t.dout, m.du = t.du, m.ddelta = t.ddt, m.dB = t.dB, m.dC = t.dC, m.dz = t.dz;
        sync_print("begin", c, "mamba");
        mamba_forward(m);
        if (c.backward) mamba_backward(m);
        sync_print("end", c, "mamba");
      } else {
        const Geo g{p.Bt, p.K, p.Dm, p.N, p.H, p.W, p.T};
        const int64_t L2 = 2 * int64_t(p.T), nx = int64_t(p.Bt) * p.K * p.Dm * L2, nb = int64_t(p.Bt) * p.K * p.N * L2;
        float *xs = dalloc(nx), *dts = dalloc(nx), *Bs = dalloc(nb), *Cs = dalloc(nb), *out = dalloc(nx);
        m.batch = p.Bt, m.dim = p.K * p.Dm, m.seqlen = int(L2), m.groups = p.K;
        m.u = xs, m.delta = dts, m.B = Bs, m.C = Cs, m.z = nullptr, m.out = out;
        m.x = dalloc(size_t(p.Bt) * p.K * p.Dm * mamba_chunks(int(L2)) * p.N * 2);
        float *dfull = nullptr, *dxs = nullptr, *ddts = nullptr, *dBs = nullptr, *dCs = nullptr;
        if (c.backward) {
          dfull = dalloc(nx), dxs = dalloc(nx), ddts = dalloc(nx), dBs = dalloc(nb), dCs = dalloc(nb);
          m.dout = dfull, m.du = dxs, m.ddelta = ddts, m.dB = dBs, m.dC = dCs;
        }
        sync_print("begin", c, "mamba");
        materialise_inputs<<<grid_for((nx + nb)), 256>>>(g, t.u, t.dt, t.B, t.C, xs, dts, Bs, Cs);
        mamba_forward(m);
        materialise_recover<<<grid_for(n_u(p)), 256>>>(g, out, t.y);
        if (c.backward) {
          materialise_dout<<<grid_for(nx), 256>>>(g, t.dout, dfull);
          mamba_backward(m);
          materialise_recover<<<grid_for(n_u(p)), 256>>>(g, dxs, t.du);
          materialise_token_grads<<<grid_for(2 * nx + nb), 256>>>(g, ddts, dBs, dCs, t.ddt, t.dB, t.dC);
        }
        CHECK(cudaGetLastError());
        sync_print("end", c, "mamba");
      }
      std::vector<double> hA, hD, hbias;
      if (c.backward) {
        auto to_d = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
        hA = to_d(download(dA, n_a(p))), hD = to_d(download(dD, n_d(p))), hbias = to_d(download(dbias, n_d(p)));
      }
      check_outputs("mamba", &hA, &hD, &hbias);
    }
    std::fflush(stdout);
  }
  for (void* p : g_allocs) cudaFree(p);
  std::printf("@@done\n");
  return 0;
}
