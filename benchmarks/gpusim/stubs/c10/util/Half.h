// xscan gpusim stub: at::Half / c10::Half as a name only (the fp32 instantiations never use it).
#pragma once
#include <cuda_fp16.h>
namespace c10 {
struct Half {
  unsigned short x;
};
}  // namespace c10
namespace at {
using c10::Half;
}
