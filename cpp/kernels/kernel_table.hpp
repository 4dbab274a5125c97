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

struct KernelTable {
  LayerNormForwardFn<float> layer_norm_forward_f32;
  LayerNormForwardFn<double> layer_norm_forward_f64;
  LayerNormBackwardFn<float> layer_norm_backward_f32;
  LayerNormBackwardFn<double> layer_norm_backward_f64;
};

}  // namespace normkit
