// Python bindings of the CPU scan kernels (xscan._C).
#include <torch/extension.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("max_threads", &max_threads, "OpenMP threads the CPU kernels use");
}
