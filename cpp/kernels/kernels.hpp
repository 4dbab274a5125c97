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

// BatchNorm pieces over x viewed as (n, c, s); see batch_norm_kernel.cpp.

template <class T>
void batch_norm_infer_forward(T* y, T* mean, T* invstd, const T* x, const T* running_mean,
                              const T* running_var, const T* gamma, const T* beta, double eps,
                              int64_t n, int64_t c, int64_t s);

template <class T>
void batch_norm_grad_sums(double* sum_dy, double* sum_dy_xhat, T* dx, const T* dy, const T* x,
                          const T* mean, const T* invstd, const T* k, int64_t n, int64_t c,
                          int64_t s);

template <class T>
void batch_norm_backward_apply(T* dx, const T* dy, const T* x, const T* mean, const T* invstd,
                               const T* k, const T* a, const T* b, int64_t n, int64_t c, int64_t s);

template <class T>
void batch_norm_train_forward(T* y, T* mean, T* invstd, double* batch_mean, double* batch_var,
                              const T* x, const T* gamma, const T* beta, double eps, int64_t n,
                              int64_t c, int64_t s);
template <class T>
void batch_norm_train_backward(T* dx, double* sum_dy, double* sum_dy_xhat, const T* dy, const T* x,
                               const T* mean, const T* invstd, const T* k, int64_t n, int64_t c,
                               int64_t s);

// BatchNorm's per-channel bookkeeping; see batch_norm_channels.cpp.

template <class T>
void batch_norm_update_running(T* running_mean, T* running_var, const double* batch_mean,
                               const double* batch_var, double momentum, double unbias, int64_t c);

template <class T>
void batch_norm_grad_scale(T* scale, const T* gamma, const T* invstd, int64_t c);

template <class T>
void batch_norm_grad_params(T* dgamma, T* dbeta, const double* sum_dy_xhat, const double* sum_dy,
                            int64_t c);
}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
