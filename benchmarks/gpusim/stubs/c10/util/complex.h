// xscan gpusim stub: just enough of c10::complex for mamba-ssm's selective_scan headers to compile
// (only the real-weight instantiations are ever used).
#pragma once
#include <cuda_runtime.h>

#include <type_traits>
namespace c10 {
template <typename T>
struct complex {
  T real_{}, imag_{};
  constexpr complex() = default;
  __host__ __device__ constexpr complex(T re, T im = T()) : real_(re), imag_(im) {}
  __host__ __device__ constexpr T real() const { return real_; }
  __host__ __device__ constexpr T imag() const { return imag_; }
  __host__ __device__ complex& operator+=(const complex& o) {
    real_ += o.real_;
    imag_ += o.imag_;
    return *this;
  }
};
template <typename T>
__host__ __device__ inline complex<T> operator+(const complex<T>& a, const complex<T>& b) {
  return {a.real_ + b.real_, a.imag_ + b.imag_};
}
template <typename T>
__host__ __device__ inline complex<T> operator-(const complex<T>& a, const complex<T>& b) {
  return {a.real_ - b.real_, a.imag_ - b.imag_};
}
template <typename T>
__host__ __device__ inline complex<T> operator*(const complex<T>& a, const complex<T>& b) {
  return {a.real_ * b.real_ - a.imag_ * b.imag_, a.real_ * b.imag_ + a.imag_ * b.real_};
}
template <typename T>
__host__ __device__ inline complex<T> operator*(T s, const complex<T>& a) {
  return {s * a.real_, s * a.imag_};
}
template <typename T>
__host__ __device__ inline complex<T> operator*(const complex<T>& a, T s) {
  return {s * a.real_, s * a.imag_};
}
}  // namespace c10
namespace std {
template <typename T>
__host__ __device__ inline c10::complex<T> conj(const c10::complex<T>& a) {
  return {a.real_, -a.imag_};
}
}  // namespace std
