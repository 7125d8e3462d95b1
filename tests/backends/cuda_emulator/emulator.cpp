// Host emulation of the CUDA scan kernels, for machines without a GPU: the kernel bodies of
// csrc/cuda/scan_device.cuh compiled by the host compiler, the threads of a block run as cooperative
// fibers (ucontext) on one OS thread, __syncthreads as a barrier that yields to the next fiber,
// __shfl_xor_sync through a per-block exchange array. Blocks run one after the other. Linked with
// csrc/cuda/bindings.cpp it is a drop-in for xscan._C_cuda on CPU tensors (float32 only). It checks the
// kernels' index maths, recurrences and reductions; it cannot check anything the hardware does
// (memory model, occupancy, fp16/bf16 loads, launch limits).
#include <ucontext.h>

#include <cstdint>
#include <functional>
#include <type_traits>
#include <vector>

#include "scan_params.h"

namespace {

constexpr int kThreads = xscan::cuda::kThreadsPerBlock;
constexpr size_t kFiberStack = 256 * 1024;

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

Dim3 threadIdx, blockIdx;

// One block's threads as fibers, scheduled round-robin; a fiber runs until it waits at a barrier or
// finishes.
class Block {
 public:
  explicit Block(size_t shared_floats) : exchange(kThreads), shared(shared_floats), stacks_(kThreads) {
    for (auto& stack : stacks_) stack.resize(kFiberStack);
  }

  void run(const std::function<void()>& body) {
    body_ = &body;
    finished_ = arrived_ = 0;
    generation_ = 0;
    done_.assign(kThreads, false);
    fibers_.resize(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      getcontext(&fibers_[t]);
      fibers_[t].uc_stack.ss_sp = stacks_[t].data();
      fibers_[t].uc_stack.ss_size = stacks_[t].size();
      fibers_[t].uc_link = &scheduler_;
      makecontext(&fibers_[t], &Block::entry, 0);
    }
    current_ = 0;
    threadIdx.x = 0;
    swapcontext(&scheduler_, &fibers_[0]);
  }

  void barrier() {
    const int64_t generation = generation_;
    if (++arrived_ == kThreads) {
      arrived_ = 0;
      ++generation_;
    }
    while (generation_ == generation) yield();
  }

  std::vector<float> exchange, shared;

 private:
  static void entry();

  void yield() {
    const int from = current_;
    int next = from;
    do next = (next + 1) % kThreads;
    while (done_[next] && next != from);
    if (next == from) return;
    current_ = next;
    threadIdx.x = next;
    swapcontext(&fibers_[from], &fibers_[next]);
    threadIdx.x = from;  // resumed
    current_ = from;
  }

  const std::function<void()>* body_ = nullptr;
  std::vector<std::vector<char>> stacks_;
  std::vector<ucontext_t> fibers_;
  std::vector<bool> done_;
  ucontext_t scheduler_;
  int current_ = 0, finished_ = 0, arrived_ = 0;
  int64_t generation_ = 0;

  friend Block*& running_block();
};

Block*& running_block() {
  static Block* block = nullptr;
  return block;
}

void Block::entry() {
  Block& b = *running_block();
  (*b.body_)();
  b.done_[b.current_] = true;
  if (++b.finished_ == kThreads) return;  // uc_link: back to the scheduler
  b.yield();  // never returns here: this fiber is done and is skipped from now on
}

void __syncthreads() { running_block()->barrier(); }

// Every call site in the kernels is reached by all threads of the block together, so a block-wide
// exchange is a faithful (stricter) stand-in for the warp shuffle.
float __shfl_xor_sync(unsigned /*mask*/, float value, int lane_mask, int /*width*/) {
  Block& block = *running_block();
  block.exchange[threadIdx.x] = value;
  block.barrier();
  const float other = block.exchange[threadIdx.x ^ lane_mask];
  block.barrier();
  return other;
}

// One OS thread runs everything: an atomic add is a plain one.
float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}

}  // namespace

namespace xscan {
namespace cuda {
inline float* dynamic_shared() { return running_block()->shared.data(); }
}  // namespace cuda
}  // namespace xscan

#include "scan_kernel.cuh"

namespace xscan {
namespace cuda {
namespace {

template <typename Routes>
void run_grid(void (*kernel)(ScanParams, Routes), const ScanParams& P, const Routes& routes, size_t shared_bytes) {
  const unsigned tiles = P.group_tiles * P.tiles_per_group;
  Block block(shared_bytes / sizeof(float));
  running_block() = &block;
  const std::function<void()> body = [&] { kernel(P, routes); };
  for (unsigned z = 0; z < static_cast<unsigned>(P.batch); ++z)
    for (unsigned y = 0; y < static_cast<unsigned>(P.routes); ++y)
      for (unsigned x = 0; x < tiles; ++x) {
        blockIdx = Dim3{x, y, z};
        block.run(body);
      }
  running_block() = nullptr;
}

}  // namespace

const char* launch_scan_forward(const ScanParams& P, DType dtype, void*) {
  if (dtype != DType::kFloat) return "the host emulation runs float32 only";
  with_routes(P, [&](const auto& routes) {
    using Routes = std::decay_t<decltype(routes)>;
    run_grid(two_states_per_lane(P) ? scan_forward_kernel<float, 2, Routes> : scan_forward_kernel<float, 1, Routes>, P,
             routes, 0);
    return 0;
  });
  return "";
}

const char* launch_scan_backward(const ScanParams& P, DType dtype, void*) {
  if (dtype != DType::kFloat) return "the host emulation runs float32 only";
  with_routes(P, [&](const auto& routes) {
    using Routes = std::decay_t<decltype(routes)>;
    const bool two = two_states_per_lane(P);
    run_grid(two ? scan_forward_kernel<float, 2, Routes> : scan_forward_kernel<float, 1, Routes>,
             state_saving_pass(P), routes, 0);
    run_grid(two ? scan_backward_kernel<float, 2, Routes> : scan_backward_kernel<float, 1, Routes>, P, routes,
             backward_shared_bytes(P));
    return 0;
  });
  return "";
}

}  // namespace cuda
}  // namespace xscan
