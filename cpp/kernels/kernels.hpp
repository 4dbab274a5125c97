#pragma once
// Kernels of one ISA build. NORMKIT_CPU_NS is baseline, avx2 or avx512 (set by CMake), so
// each build's symbols live in their own namespace.

#include <cstdint>

#ifndef NORMKIT_CPU_NS
#error "NORMKIT_CPU_NS must name the ISA namespace of this kernel build"
#endif

namespace normkit {
namespace NORMKIT_CPU_NS {

template <class T>
void layer_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* gamma, const T* beta,
                        int64_t rows, int64_t cols, double eps);

template <class T>
void layer_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                         const T* rstd, const T* gamma, int64_t rows, int64_t cols);

}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
