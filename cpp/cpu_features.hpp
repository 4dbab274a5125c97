#pragma once
// What the CPU (and the operating system, through XCR0) lets us run.

namespace normkit {

struct CpuFeatures {
  bool avx2_fma = false;  // AVX2 + FMA3, with YMM state enabled by the OS
  bool avx512 = false;    // AVX-512 F/BW/DQ/VL, with ZMM and opmask state enabled by the OS
};

// Read once from CPUID and XGETBV; all false on non-x86 CPUs.
const CpuFeatures& cpu_features();

}  // namespace normkit
