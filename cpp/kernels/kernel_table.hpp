#pragma once
// The interface every per-ISA kernel build provides. Pointers are contiguous, row-major;
// optional inputs/outputs are nullptr. See layer_norm.hpp for the semantics.

#include <cstdint>

namespace normkit {

template <class T>
using LayerNormForwardFn = void (*)(T* y, T* mean, T* rstd, const T* x, const T* gamma,
                                    const T* beta, int64_t rows, int64_t cols, double eps);

template <class T>
using LayerNormBackwardFn = void (*)(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x,
                                     const T* mean, const T* rstd, const T* gamma, int64_t rows,
                                     int64_t cols);

// BatchNorm over x viewed as (n, c, s); per-channel arrays have length c.
// infer_forward: the forward with given statistics (the running ones): the statistics used
// (mean_hi and invstd of channel_affine.hpp) and y.
template <class T>
using BatchNormInferForwardFn = void (*)(T* y, T* mean, T* invstd, const T* x,
                                         const T* running_mean, const T* running_var,
                                         const T* gamma, const T* beta, double eps, int64_t n,
                                         int64_t c, int64_t s);
// grad_sums: float64 sums of dy and dy * (x - mean) * invstd per channel; with dx non-null it
// also writes dx = k * dy in the same pass (the eval-mode backward).
template <class T>
using BatchNormGradSumsFn = void (*)(double* sum_dy, double* sum_dy_xhat, T* dx, const T* dy,
                                     const T* x, const T* mean, const T* invstd, const T* k,
                                     int64_t n, int64_t c, int64_t s);
// backward_apply: dx = k * (dy - a - (x - mean) * invstd * b); with x == nullptr, dx = k * dy.
template <class T>
using BatchNormBackwardApplyFn = void (*)(T* dx, const T* dy, const T* x, const T* mean,
                                          const T* invstd, const T* k, const T* a, const T* b,
                                          int64_t n, int64_t c, int64_t s);

// train_forward: the forward with batch statistics: their float64 mean and biased variance,
// the statistics used (mean_hi and invstd of channel_affine.hpp) and y.
template <class T>
using BatchNormTrainForwardFn = void (*)(T* y, T* mean, T* invstd, double* batch_mean,
                                         double* batch_var, const T* x, const T* gamma,
                                         const T* beta, double eps, int64_t n, int64_t c,
                                         int64_t s);
// train_backward: the training backward; float64 sums of dy and dy * xhat per channel, and
// dx = k * (dy - a - (x - mean) * invstd * b) with a = sum_dy / (n * s), b = sum_dy_xhat / (n * s).
template <class T>
using BatchNormTrainBackwardFn = void (*)(T* dx, double* sum_dy, double* sum_dy_xhat, const T* dy,
                                          const T* x, const T* mean, const T* invstd, const T* k,
                                          int64_t n, int64_t c, int64_t s);
// Per-channel bookkeeping (c channels): the running statistics' update,
//   running_mean = (1 - momentum) * running_mean + momentum * batch_mean,
//   running_var = (1 - momentum) * running_var + momentum * batch_var * unbias;
// the backward's scale = gamma * invstd (gamma may be nullptr); and dgamma = sum_dy_xhat,
// dbeta = sum_dy rounded to T.
template <class T>
using BatchNormUpdateRunningFn = void (*)(T* running_mean, T* running_var, const double* batch_mean,
                                          const double* batch_var, double momentum, double unbias,
                                          int64_t c);
template <class T>
using BatchNormGradScaleFn = void (*)(T* scale, const T* gamma, const T* invstd, int64_t c);
template <class T>
using BatchNormGradParamsFn = void (*)(T* dgamma, T* dbeta, const double* sum_dy_xhat,
                                       const double* sum_dy, int64_t c);

// One ISA build's kernels, for one dtype.
template <class T>
struct Kernels {
  LayerNormForwardFn<T> layer_norm_forward;
  LayerNormBackwardFn<T> layer_norm_backward;
  BatchNormInferForwardFn<T> batch_norm_infer_forward;
  BatchNormGradSumsFn<T> batch_norm_grad_sums;
  BatchNormBackwardApplyFn<T> batch_norm_backward_apply;
  BatchNormTrainForwardFn<T> batch_norm_train_forward;
  BatchNormTrainBackwardFn<T> batch_norm_train_backward;
  BatchNormUpdateRunningFn<T> batch_norm_update_running;
  BatchNormGradScaleFn<T> batch_norm_grad_scale;
  BatchNormGradParamsFn<T> batch_norm_grad_params;
};

struct KernelTable {
  Kernels<float> f32;
  Kernels<double> f64;

  template <class T>
  const Kernels<T>& of() const {
    if constexpr (sizeof(T) == sizeof(float))
      return f32;
    else
      return f64;
  }
};

}  // namespace normkit
