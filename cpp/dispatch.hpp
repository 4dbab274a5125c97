#pragma once
// Runtime choice of the kernel implementation (baseline, AVX2+FMA, AVX-512).
//
// The best ISA the CPU supports is chosen on first use; the environment variable
// NORMKIT_ISA=baseline|avx2|avx512|auto overrides it. An unknown name, or an ISA this CPU
// or build lacks, throws std::invalid_argument saying what was asked and what is available.

#include <string>
#include <vector>

#include "kernels/kernel_table.hpp"

namespace normkit {

enum class Isa { baseline, avx2, avx512 };

const char* isa_name(Isa isa);

// ISAs compiled into this build and supported by this CPU, lowest first.
std::vector<Isa> available_isas();

// "baseline" | "avx2" | "avx512" | "auto" (best available). Throws std::invalid_argument.
Isa parse_isa(const std::string& name);

// The active ISA; the first call reads NORMKIT_ISA (and may throw).
Isa active_isa();

// Switch implementation (benchmarks, tests). Throws std::invalid_argument if unavailable.
void set_active_isa(Isa isa);

const KernelTable& active_kernels();

}  // namespace normkit
