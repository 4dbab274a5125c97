#pragma once
// BatchNorm over x viewed as (n, c, s): channel axis of length c, statistics over the n * s
// values of each channel (n = product of the axes before the channel axis, s = after it).
// Semantics follow torch.nn.functional.batch_norm:
//
//  - training, or no running statistics: the batch's mean and biased variance are used;
//    in training, running_mean/running_var (if given) are updated in place,
//        running = (1 - momentum) * running + momentum * batch
//    with the *unbiased* batch variance (n*s / (n*s - 1)) for running_var;
//  - otherwise (inference): running_mean and running_var are used.
//
//   y = (x - mean) * invstd * gamma + beta,   invstd = 1 / sqrt(var + eps)
//
// mean/invstd receive the statistics actually used. The backward, with xhat = (x - mean) *
// invstd and N = n * s values per channel:
//   training: dx = gamma * invstd * (dy - sum(dy)/N - xhat * sum(dy * xhat)/N)
//   eval:     dx = gamma * invstd * dy            (the statistics are constants)
//   dgamma = sum(dy * xhat),  dbeta = sum(dy)     (when gamma is given)
// gamma/beta/running statistics may be nullptr. Throws std::invalid_argument on a bad eps, a
// running_mean without running_var (or the reverse), or too few values per channel.

#include <cstdint>

namespace normkit {

template <class T>
void batch_norm_forward(T* y, T* mean, T* invstd, T* running_mean, T* running_var, const T* x,
                        const T* gamma, const T* beta, int64_t n, int64_t c, int64_t s,
                        bool training, double momentum, double eps);

template <class T>
void batch_norm_backward(T* dx, T* dgamma, T* dbeta, const T* dy, const T* x, const T* mean,
                         const T* invstd, const T* gamma, int64_t n, int64_t c, int64_t s,
                         bool training);

}  // namespace normkit
