// Compiled once per ISA: this build's entry in the dispatch table.
#include "kernels/kernel_table.hpp"

#include "kernels/kernels.hpp"

namespace normkit {
namespace NORMKIT_CPU_NS {

const KernelTable& kernel_table() {
  static const KernelTable table{
      &layer_norm_forward<float>,
      &layer_norm_forward<double>,
      &layer_norm_backward<float>,
      &layer_norm_backward<double>,
  };
  return table;
}

}  // namespace NORMKIT_CPU_NS
}  // namespace normkit
