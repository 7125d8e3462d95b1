// A call split into work items over the threads, and the partial sums of what items share.
//
// Work is split over (batch b, block of channels) items with OpenMP, handed out to the threads one
// at a time (the backward: one contiguous range of items at a time), so a thread that shares its core
// with another process does less of the call; one thread runs all K routes of its item (an Engine,
// scan_engine.h), so it owns y, du, ddelta, dz of those channels and the route sums need no atomics.
// Gradients of tensors shared between items (B, C of a group; A, D, delta_bias across the batch) go
// to per-range partial buffers summed afterwards in range order: deterministic for a given thread
// count.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "scan_engine.h"

namespace xscan {
namespace cpu {

constexpr int64_t kRangesPerThread = 4;  // backward: ranges of items per thread (see run_backward)

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
