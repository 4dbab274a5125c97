#include "dispatch.hpp"

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "cpu_features.hpp"

namespace normkit {

// Each ISA's table is defined in kernels/kernel_table.cpp, compiled once per ISA.
namespace baseline {
const KernelTable& kernel_table();
}
#ifdef NORMKIT_HAVE_AVX2
namespace avx2 {
const KernelTable& kernel_table();
}
#endif
#ifdef NORMKIT_HAVE_AVX512
namespace avx512 {
const KernelTable& kernel_table();
}
#endif

namespace {

const KernelTable& table_for(Isa isa) {
  switch (isa) {
#ifdef NORMKIT_HAVE_AVX2
    case Isa::avx2:
      return avx2::kernel_table();
#endif
#ifdef NORMKIT_HAVE_AVX512
    case Isa::avx512:
      return avx512::kernel_table();
#endif
    default:
      return baseline::kernel_table();
  }
}

std::string available_names() {
  std::string names;
  for (Isa isa : available_isas()) {
    if (!names.empty()) names += ", ";
    names += isa_name(isa);
  }
  return names;
}

bool is_available(Isa isa) {
  for (Isa a : available_isas())
    if (a == isa) return true;
  return false;
}

struct Active {
  std::atomic<Isa> isa;
  std::atomic<const KernelTable*> table;
};

Active& active_state() {
  // Initialised once, thread-safely, from the environment.
  static Active state = [] {
    const char* env = std::getenv("NORMKIT_ISA");
    const Isa isa = parse_isa(env && *env ? env : "auto");
    if (!is_available(isa))
      throw std::invalid_argument(std::string("NORMKIT_ISA=") + env + " asks for an ISA this " +
                                  "CPU or build lacks; available: " + available_names());
    return Active{{isa}, {&table_for(isa)}};
  }();
  return state;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
    default:
      return "baseline";
  }
}

std::vector<Isa> available_isas() {
  std::vector<Isa> isas{Isa::baseline};
  const CpuFeatures& cpu = cpu_features();
#ifdef NORMKIT_HAVE_AVX2
  if (cpu.avx2_fma) isas.push_back(Isa::avx2);
#endif
#ifdef NORMKIT_HAVE_AVX512
  if (cpu.avx512) isas.push_back(Isa::avx512);
#endif
  (void)cpu;
  return isas;
}

Isa parse_isa(const std::string& name) {
  if (name == "auto") return available_isas().back();
  if (name == "baseline") return Isa::baseline;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  throw std::invalid_argument(
      "unknown ISA '" + name +
      "'; expected baseline, avx2, avx512 or auto (available here: " + available_names() + ")");
}

Isa active_isa() { return active_state().isa.load(); }

void set_active_isa(Isa isa) {
  if (!is_available(isa))
    throw std::invalid_argument(
        std::string("ISA '") + isa_name(isa) +
        "' is not available on this CPU or build; available: " + available_names());
  Active& state = active_state();
  state.table.store(&table_for(isa));
  state.isa.store(isa);
}

const KernelTable& active_kernels() { return *active_state().table.load(); }

}  // namespace normkit
