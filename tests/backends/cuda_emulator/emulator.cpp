// Host emulation of the CUDA scan kernels, for machines without a GPU: the kernel bodies of
// csrc/cuda/scan_device.cuh compiled by the host compiler, each CUDA thread of a block run as an OS
// thread, __syncthreads as a barrier, __shfl_xor_sync through a per-block exchange array. Linked with
// csrc/cuda/bindings.cpp it is a drop-in for xscan._C_cuda on CPU tensors (float32 only). It checks
// the kernels' index maths, recurrences and reductions; it cannot check anything the hardware does
// (memory model, occupancy, fp16/bf16 loads, launch limits).
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "scan_params.h"

namespace {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const int64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation_ != generation; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_, arrived_ = 0;
  int64_t generation_ = 0;
};

struct Block {
  explicit Block(size_t shared_floats)
      : barrier(xscan::cuda::kThreadsPerBlock), exchange(xscan::cuda::kThreadsPerBlock), shared(shared_floats) {}
  Barrier barrier;
  std::vector<float> exchange;
  std::vector<float> shared;
};

thread_local Dim3 threadIdx, blockIdx;
thread_local Block* current_block = nullptr;

void __syncthreads() { current_block->barrier.wait(); }

// Every call site in the kernels is reached by all threads of the block together, so a block-wide
// exchange is a faithful (stricter) stand-in for the warp shuffle.
float __shfl_xor_sync(unsigned /*mask*/, float value, int lane_mask, int /*width*/) {
  Block& block = *current_block;
  block.exchange[threadIdx.x] = value;
  block.barrier.wait();
  const float other = block.exchange[threadIdx.x ^ lane_mask];
  block.barrier.wait();
  return other;
}

}  // namespace

namespace xscan {
namespace cuda {
inline float* dynamic_shared() { return current_block->shared.data(); }
}  // namespace cuda
}  // namespace xscan

#include "scan_device.cuh"

namespace xscan {
namespace cuda {
namespace {

void run_grid(void (*kernel)(ScanParams), const ScanParams& P, size_t shared_bytes) {
  const unsigned tiles = P.group_tiles * P.tiles_per_group;
  for (unsigned z = 0; z < static_cast<unsigned>(P.batch); ++z)
    for (unsigned y = 0; y < static_cast<unsigned>(P.routes); ++y)
      for (unsigned x = 0; x < tiles; ++x) {
        Block block(shared_bytes / sizeof(float));
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < static_cast<unsigned>(kThreadsPerBlock); ++t)
          threads.emplace_back([&, t] {
            threadIdx = Dim3{t, 0, 0};
            blockIdx = Dim3{x, y, z};
            current_block = &block;
            kernel(P);
          });
        for (auto& thread : threads) thread.join();
      }
}

}  // namespace

const char* launch_scan_forward(const ScanParams& P, DType dtype, void*) {
  if (dtype != DType::kFloat) return "the host emulation runs float32 only";
  run_grid(two_states_per_lane(P) ? scan_forward_kernel<float, 2> : scan_forward_kernel<float, 1>, P, 0);
  return "";
}

const char* launch_scan_backward(const ScanParams& P, DType dtype, void*) {
  if (dtype != DType::kFloat) return "the host emulation runs float32 only";
  const bool two = two_states_per_lane(P);
  run_grid(two ? scan_forward_kernel<float, 2> : scan_forward_kernel<float, 1>, state_saving_pass(P), 0);
  run_grid(two ? scan_backward_kernel<float, 2> : scan_backward_kernel<float, 1>, P, backward_shared_bytes(P));
  return "";
}

}  // namespace cuda
}  // namespace xscan
