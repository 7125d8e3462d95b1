// xscan gpusim stub: at::BFloat16 as a name only (the fp32 instantiations never use it).
#pragma once
namespace c10 {
struct BFloat16 {
  unsigned short x;
};
}  // namespace c10
namespace at {
using c10::BFloat16;
}
