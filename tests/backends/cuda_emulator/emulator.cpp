// Host emulation of the CUDA scan kernels, for machines without a GPU: the kernel bodies of
// csrc/cuda/scan_device.cuh compiled by the host compiler, for fp32, fp16 and bf16 inputs. Linked
// with csrc/cuda/bindings.cpp it is a drop-in for xscan._C_cuda on CPU tensors.
//
// The threads of a block run as cooperative fibers (ucontext) on one OS thread; blocks run one
// after the other. A fiber runs until it waits: at __syncthreads for the whole block, at a warp
// shuffle for the 32 lanes of its warp only. Between two barriers (a phase) the scheduler always
// resumes the first fiber that can run in the phase's order, XSCAN_EMULATOR_ORDER:
//   shuffle[:SEED] (the default, seed 0)  the warps in a shuffled order, the lanes of each
//                                         shuffled, anew for every block and phase;
//   forward / reverse                     thread order, or its reverse, in every phase.
// So the first warp runs up to the next barrier before the others start, and a read of shared
// memory that another thread writes in the same phase (a missing __syncthreads) sees the write or
// not depending on the order: a shuffled order makes such a race give wrong results. Shared memory
// starts each block as NaN (it is uninitialised on the GPU). A barrier not reached by every thread,
// or a shuffle not reached by every lane of a warp, fails the launch.
//
// exp: XSCAN_EMULATOR_EXP=fast (the default) models __expf and exp2f, which the kernels use on the
// GPU (scan_math.h's exp_acc, exp2_acc); exact uses std::exp and std::exp2.
//
// It checks the kernels' index maths, recurrences, reductions and barriers; it cannot check the
// rest of what the hardware does (memory model, occupancy, fused multiply-adds, other fast-math
// rounding, performance).
#include <ucontext.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "scan_params.h"

#ifndef XSCAN_HOST_EXPF
#error "build with -DXSCAN_HOST_EXPF=xscan_emulated_expf -DXSCAN_HOST_EXP2F=xscan_emulated_exp2f (see __init__.py)"
#endif

namespace {

constexpr int kThreads = xscan::cuda::kThreadsPerBlock;
constexpr int kWarp = 32;
static_assert(kThreads % kWarp == 0, "a block is whole warps");
constexpr size_t kFiberStack = 256 * 1024;
constexpr unsigned kGridLimitX = 2147483647u, kGridLimitYZ = 65535;
constexpr size_t kSharedLimit = 163 * 1024;  // dynamic shared memory per block, sm_80 (sm_90: 227 KB)

// ---------------------------------------------------------------------------------------------
// Settings, read from the environment at every launch.

struct Order {
  enum Kind { kForward, kReverse, kShuffle } kind = kShuffle;
  uint64_t seed = 0;
};

struct Settings {
  Order order;
  bool fast_exp = true;
};

Settings settings;
std::string launch_error;  // why the last launch failed (the launchers return a C string)

bool fail(std::string message) {
  launch_error = "host emulation: " + std::move(message);
  return false;
}

bool read_settings() {
  settings = Settings();
  const char* order = std::getenv("XSCAN_EMULATOR_ORDER");
  const std::string o = order ? order : "shuffle";
  const std::string seed = o.rfind("shuffle:", 0) == 0 ? o.substr(8) : "";
  const bool number = !seed.empty() && seed.find_first_not_of("0123456789") == std::string::npos;
  if (o == "forward") {
    settings.order.kind = Order::kForward;
  } else if (o == "reverse") {
    settings.order.kind = Order::kReverse;
  } else if (number) {
    settings.order.seed = std::strtoull(seed.c_str(), nullptr, 10);
  } else if (o != "shuffle") {
    return fail("XSCAN_EMULATOR_ORDER=" + o + ": expected forward, reverse, shuffle or shuffle:SEED");
  }
  const char* exp = std::getenv("XSCAN_EMULATOR_EXP");
  const std::string e = exp ? exp : "fast";
  if (e != "fast" && e != "exact") return fail("XSCAN_EMULATOR_EXP=" + e + ": expected fast or exact");
  settings.fast_exp = e == "fast";
  return true;
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// ---------------------------------------------------------------------------------------------
// Threads, barriers, shuffles and warp syncs.

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

Dim3 threadIdx, blockIdx;

// One block's threads as fibers; run() is the scheduler.
class Block {
 public:
  explicit Block(size_t shared_floats) : shared(shared_floats), stacks_(kThreads), fibers_(kThreads) {
    for (auto& stack : stacks_) stack.resize(kFiberStack);
  }

  // Runs body as every thread of block `id` (its number in the grid); false (error set) when the
  // threads fail to meet at a barrier or a shuffle.
  bool run(const std::function<void()>& body, const Order& order, uint64_t id) {
    body_ = &body;
    error_.clear();
    std::fill(shared.begin(), shared.end(), std::numeric_limits<float>::quiet_NaN());
    state_.assign(kThreads, State::kRunnable);
    shuffles_.assign(kThreads, 0);
    for (int t = 0; t < kThreads; ++t) {
      getcontext(&fibers_[t]);
      fibers_[t].uc_stack.ss_sp = stacks_[t].data();
      fibers_[t].uc_stack.ss_size = stacks_[t].size();
      fibers_[t].uc_link = &scheduler_;  // where a finished fiber goes
      makecontext(&fibers_[t], &Block::entry, 0);
    }
    for (uint64_t phase = 0;; ++phase) {
      set_order(order, id, phase);
      // Resume the first runnable fiber in the phase's order until none can run. A fiber stops at a
      // barrier, at a shuffle or at its end; a shuffle that all lanes have reached makes its warp
      // runnable again, maybe before the current position.
      for (int i = 0; i < kThreads;) {
        const int t = order_[i];
        if (state_[t] != State::kRunnable) {
          ++i;
          continue;
        }
        restart_ = kThreads;
        current_ = t;
        threadIdx.x = t;
        swapcontext(&scheduler_, &fibers_[t]);
        if (!error_.empty()) return fail(error_ + where(id));
        i = std::min(i, restart_);
      }
      int done = 0, waiting = 0;
      for (const State s : state_) done += s == State::kDone, waiting += s == State::kBarrier;
      if (done == kThreads) return true;
      if (done + waiting < kThreads) return fail("a warp shuffle that not every lane of the warp reached" + where(id));
      if (done > 0) return fail("a __syncthreads that not every thread of the block reached" + where(id));
      state_.assign(kThreads, State::kRunnable);  // every thread is at the barrier: the next phase
    }
  }

  // __syncthreads
  void barrier() {
    state_[current_] = State::kBarrier;
    suspend();
  }

  // __shfl_{xor,up,down}_sync: one exchange slot per lane, two slots alternating between a warp's
  // shuffles, so one warp sync each: a lane writes the next shuffle's slot only after every lane of
  // its warp has written (so read) this one's. `source(lane)` is the lane read, or the caller itself
  // where that lies outside its group of `width` lanes (as the hardware does).
  template <typename Source>
  float shuffle(unsigned mask, float value, Source source) {
    const int t = current_, lane = t % kWarp;
    if (mask != 0xffffffffu) error_ = "a shuffle over part of a warp (not emulated)";
    float* slot = exchange_[shuffles_[t]++ & 1];
    slot[t] = value;
    warp_sync();
    return slot[t - lane + source(lane)];
  }

  float shuffle_xor(unsigned mask, float value, int lane_mask, int width) {
    return shuffle(mask, value, [&](int lane) {
      const int source = lane ^ lane_mask;
      return source > (lane | (width - 1)) ? lane : source;
    });
  }

  float shuffle_up(unsigned mask, float value, int delta, int width) {
    return shuffle(mask, value, [&](int lane) { return lane % width >= delta ? lane - delta : lane; });
  }

  float shuffle_down(unsigned mask, float value, int delta, int width) {
    return shuffle(mask, value, [&](int lane) { return lane % width + delta < width ? lane + delta : lane; });
  }

  std::vector<float> shared;

 private:
  enum class State : uint8_t { kRunnable, kShuffle, kBarrier, kDone };

  static void entry();

  void suspend() { swapcontext(&fibers_[current_], &scheduler_); }

  // The caller waits until every lane of its warp is at a shuffle: their n-th, all of them.
  void warp_sync() {
    const int t = current_, first = t - t % kWarp;
    state_[t] = State::kShuffle;
    bool all = true;
    for (int l = first; l < first + kWarp; ++l) all = all && state_[l] == State::kShuffle;
    if (all) {
      for (int l = first; l < first + kWarp; ++l) {
        if (shuffles_[l] != shuffles_[t]) error_ = "the lanes of a warp met at different shuffles";
        state_[l] = State::kRunnable;
        restart_ = std::min(restart_, rank_[l]);
      }
    }
    suspend();
  }

  void set_order(const Order& order, uint64_t id, uint64_t phase) {
    for (int i = 0; i < kThreads; ++i) order_[i] = order.kind == Order::kReverse ? kThreads - 1 - i : i;
    if (order.kind == Order::kShuffle) {
      // Warps in a shuffled order, the lanes of each shuffled (Fisher-Yates seeded by seed, block, phase).
      uint64_t state = order.seed;
      state = splitmix64(state) ^ id;
      state = splitmix64(state) ^ phase;
      const auto shuffle = [&](int* first, int n) {
        for (int i = n - 1; i > 0; --i) std::swap(first[i], first[splitmix64(state) % (i + 1)]);
      };
      int warps[kThreads / kWarp];
      for (int w = 0; w < kThreads / kWarp; ++w) warps[w] = w;
      shuffle(warps, kThreads / kWarp);
      for (int w = 0; w < kThreads / kWarp; ++w) {
        for (int lane = 0; lane < kWarp; ++lane) order_[w * kWarp + lane] = warps[w] * kWarp + lane;
        shuffle(order_ + w * kWarp, kWarp);
      }
    }
    for (int i = 0; i < kThreads; ++i) rank_[order_[i]] = i;
  }

  static std::string where(uint64_t id) {
    return " (block " + std::to_string(id) + " = (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) +
           ", " + std::to_string(blockIdx.z) + "))";
  }

  const std::function<void()>* body_ = nullptr;
  std::vector<std::vector<char>> stacks_;
  std::vector<ucontext_t> fibers_;
  ucontext_t scheduler_;
  std::vector<State> state_;
  std::vector<int> shuffles_;  // shuffles each thread has started
  float exchange_[2][kThreads];
  int order_[kThreads], rank_[kThreads];  // the phase's order, and each thread's place in it
  int current_ = 0, restart_ = kThreads;
  std::string error_;

  friend Block*& running_block();
};

Block*& running_block() {
  static Block* block = nullptr;
  return block;
}

void Block::entry() {
  Block& b = *running_block();
  (*b.body_)();
  b.state_[b.current_] = State::kDone;
}

void __syncthreads() { running_block()->barrier(); }

float __shfl_xor_sync(unsigned mask, float value, int lane_mask, int width = kWarp) {
  return running_block()->shuffle_xor(mask, value, lane_mask, width);
}

float __shfl_up_sync(unsigned mask, float value, int delta, int width = kWarp) {
  return running_block()->shuffle_up(mask, value, delta, width);
}

float __shfl_down_sync(unsigned mask, float value, int delta, int width = kWarp) {
  return running_block()->shuffle_down(mask, value, delta, width);
}

// Every lane of the warp meets here, as at a shuffle.
void __syncwarp(unsigned mask = 0xffffffffu) { running_block()->shuffle_xor(mask, 0.f, 0, kWarp); }

// A fiber runs uninterrupted between barriers and shuffles: an atomic add is a plain one.
float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}

// ---------------------------------------------------------------------------------------------
// Half types: their bits, converted to float exactly as __half2float and __bfloat162float do.

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2, "the layout of torch's half types");

float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16, magnitude = h.bits & 0x7fffu;
  if (magnitude >= 0x7c00u) return bits_to_float(sign | 0x7f800000u | (magnitude & 0x3ffu) << 13);    // inf, NaN
  if (magnitude >= 0x0400u) return bits_to_float(sign | ((magnitude << 13) + ((127u - 15u) << 23)));  // normal
  const float subnormal = static_cast<float>(magnitude) * 0x1p-24f;  // mantissa * 2^-24, exact
  return sign ? -subnormal : subnormal;
}

float __bfloat162float(__nv_bfloat16 b) { return bits_to_float(static_cast<uint32_t>(b.bits) << 16); }

}  // namespace

// ex2.approx.ftz, the GPU's 2^x: its error (at most 2 ulp, PTX ISA) is modelled by rounding the
// result to 21 fraction bits; .ftz flushes subnormal results to zero.
float ex2_approx(float x) {
  const float y = std::exp2(x);
  if (y < FLT_MIN) return 0.f;
  if (!std::isfinite(y)) return y;
  uint32_t bits;
  std::memcpy(&bits, &y, sizeof bits);
  return bits_to_float((bits + 2u) & ~3u);
}

// __expf on the GPU is ex2.approx.ftz(x * log2(e)) in fp32: the product's rounding is its main
// error for |x| > 1. exp2f under --use_fast_math is ex2.approx.ftz itself.
float xscan_emulated_expf(float x) { return settings.fast_exp ? ex2_approx(x * 1.44269504088896341f) : std::exp(x); }
float xscan_emulated_exp2f(float x) { return settings.fast_exp ? ex2_approx(x) : std::exp2(x); }

namespace xscan {
namespace cuda {
inline float* dynamic_shared() { return running_block()->shared.data(); }
}  // namespace cuda
}  // namespace xscan

#include "scan_kernel.cuh"

namespace {

// The grid's blocks one after the other, each thread of a block a fiber running body.
bool run_grid(Dim3 grid, size_t shared_bytes, const std::function<void()>& body) {
  if (grid.x > kGridLimitX || grid.y > kGridLimitYZ || grid.z > kGridLimitYZ)
    return fail("grid beyond 2^31 - 1 blocks in x or 65535 in y or z");
  if (shared_bytes > kSharedLimit) return fail(std::to_string(shared_bytes) + " bytes of shared memory per block");
  Block block(shared_bytes / sizeof(float));
  running_block() = &block;
  bool ok = true;
  for (unsigned z = 0; z < grid.z && ok; ++z)
    for (unsigned y = 0; y < grid.y && ok; ++y)
      for (unsigned x = 0; x < grid.x && ok; ++x) {
        blockIdx = Dim3{x, y, z};
        ok = block.run(body, settings.order, (static_cast<uint64_t>(z) * grid.y + y) * grid.x + x);
      }
  running_block() = nullptr;
  return ok;
}

using xscan::cuda::ScanParams;

// Runs a kernel over its grid (scan_kernel.cuh's forward_passes and backward_passes `launch`).
struct EmulatedLaunch {
  template <typename Kernel, typename... Args>
  bool operator()(Kernel kernel, xscan::cuda::GridSize grid, size_t shared_bytes, const Args&... args) const {
    return run_grid(Dim3{grid.x, grid.y, grid.z}, shared_bytes, [&] { kernel(args...); });
  }
};

// pass(T()) for the input type T of `dtype`; returns the launch's error, empty on success.
template <typename Pass>
const char* launch(xscan::cuda::DType dtype, const Pass& pass) {
  using xscan::cuda::DType;
  if (!read_settings()) return launch_error.c_str();
  bool ok;
  switch (dtype) {
    case DType::kFloat: ok = pass(float()); break;
    case DType::kHalf: ok = pass(__half()); break;
    case DType::kBFloat16: ok = pass(__nv_bfloat16()); break;
    default: return "xscan: unsupported dtype code";
  }
  return ok ? "" : launch_error.c_str();
}

}  // namespace

namespace xscan {
namespace cuda {

const char* launch_scan_forward(const ScanParams& P, DType dtype, void*) {
  return launch(dtype, [&](auto type) { return run_forward<decltype(type)>(P, EmulatedLaunch()); });
}

const char* launch_scan_backward(const ScanParams& P, DType dtype, void*) {
  return launch(dtype, [&](auto type) { return run_backward<decltype(type)>(P, EmulatedLaunch()); });
}

}  // namespace cuda
}  // namespace xscan

// ---------------------------------------------------------------------------------------------
// Test-only kernels, one block of kThreads threads over in[kThreads] -> out[kThreads], run under
// the same settings (tests/backends/test_cuda.py calls them through ctypes).

namespace {

// Each thread writes its value to shared memory and reads its left neighbour's (thread 0 its own):
// without the barrier the read races with the neighbour's write.
void neighbour_kernel(const float* in, float* out, bool barrier) {
  float* shared = xscan::cuda::dynamic_shared();
  const int t = threadIdx.x;
  shared[t] = in[t];
  if (barrier) __syncthreads();
  out[t] = shared[t > 0 ? t - 1 : 0];
}

// The sum of the thread's warp by shuffles, plus the value of the thread a warp to the left
// (cyclically) through shared memory: a shuffle syncs only its warp, so without the barrier the
// read races with the other warp's write.
void warp_sum_kernel(const float* in, float* out, bool barrier) {
  float* shared = xscan::cuda::dynamic_shared();
  const int t = threadIdx.x;
  shared[t] = in[t];
  float sum = in[t];
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  if (barrier) __syncthreads();
  out[t] = sum + shared[(t + kThreads - kWarp) % kThreads];
}

// Odd threads leave before the barrier.
void divergent_barrier_kernel(const float* in, float* out, bool) {
  const int t = threadIdx.x;
  out[t] = in[t];
  if (t % 2) return;
  __syncthreads();
}

// Odd lanes skip a shuffle.
void divergent_shuffle_kernel(const float* in, float* out, bool) {
  const int t = threadIdx.x;
  out[t] = t % 2 ? in[t] : __shfl_xor_sync(0xffffffffu, in[t], 1);
}

}  // namespace

// Runs the test kernel `name` with or without its barrier; returns the launch's error, empty on
// success.
extern "C" __attribute__((visibility("default"))) const char* xscan_emulator_probe(const char* name, int barrier,
                                                                                   const float* in, float* out) {
  using Kernel = void (*)(const float*, float*, bool);
  const std::string n = name;
  const Kernel kernel = n == "neighbour"           ? neighbour_kernel
                        : n == "warp_sum"          ? warp_sum_kernel
                        : n == "divergent_barrier" ? divergent_barrier_kernel
                        : n == "divergent_shuffle" ? divergent_shuffle_kernel
                                                   : nullptr;
  if (!kernel) return "unknown test kernel";
  if (!read_settings()) return launch_error.c_str();
  const bool ok = run_grid(Dim3{1, 1, 1}, kThreads * sizeof(float), [&] { kernel(in, out, barrier != 0); });
  return ok ? "" : launch_error.c_str();
}

// n / d and n % d by the route policies' FastDivisor (csrc/include/xscan/scan_math.h), element by
// element, for the tests: the same maths as on the GPU, whose __umulhi is here a 64-bit product.
extern "C" __attribute__((visibility("default"))) void xscan_fast_divide(const int32_t* n, const int32_t* d,
                                                                         int32_t* quotient, int32_t* remainder,
                                                                         int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const xscan::FastDivisor divisor(d[i]);
    quotient[i] = n[i] / divisor;
    remainder[i] = n[i] % divisor;
  }
}
