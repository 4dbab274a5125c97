// Compiled once per ISA: this build's entry in the dispatch table.
#include "kernels/kernel_table.hpp"

#include "kernels/kernels.hpp"

namespace normkit {
namespace NORMKIT_CPU_NS {

namespace {

template <class T>
constexpr Kernels<T> kernels_of() {
  return {&layer_norm_forward<T>,        &layer_norm_backward<T>,
          &batch_norm_infer_forward<T>,  &batch_norm_grad_sums<T>,
          &batch_norm_backward_apply<T>, &batch_norm_train_forward<T>,
          &batch_norm_train_backward<T>, &batch_norm_update_running<T>,
          &batch_norm_grad_scale<T>,     &batch_norm_grad_params<T>};
}

}  // namespace

const KernelTable& kernel_table() {
  static const KernelTable table{kernels_of<float>(), kernels_of<double>()};
  return table;
}

}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
