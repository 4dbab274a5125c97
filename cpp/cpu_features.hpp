#pragma once
// What the CPU (and the operating system, through XCR0) lets us run.

namespace normkit {

struct CpuFeatures {
  bool avx2_fma = false;  // AVX2 + FMA3, with YMM state enabled by the OS
  bool avx512 = false;    // AVX-512 F/BW/DQ/VL, with ZMM and opmask state enabled by the OS
};

// Read once from CPUID and XGETBV; all false on non-x86 CPUs.
const CpuFeatures& cpu_features();

// Outputs at least this large are written with streaming (cache-bypassing) stores: an eighth
// of the last-level cache (sysfs, else the C library; 32 MiB if neither says), clamped to
// [8 MiB, 64 MiB]; read once. Past that, writing the output through the cache evicts the
// inputs a kernel is about to read again (BatchNorm's second pass over x) and costs a
// read-for-ownership of every output line. An eighth, not a quarter: a VM's 2 cores on a
// 105 MiB L3 (Xeon, AVX-512) kept only about 30 MB of a kernel's arrays there, and 25 MB
// outputs, below a quarter, ran 1.4-1.9x slower through the cache (LayerNorm 8192x768,
// BatchNorm 32x64x56x56 forward, backward and inference, 2 threads).
long long stream_threshold_bytes();

// Size of the last-level cache (sysfs: the L3, else the L2; else the C library; 0 if neither
// says); read once.
long long last_level_cache_bytes();

// Size of one core's L2 cache (sysfs, else the C library; 256 KiB if neither says); read once.
long long l2_cache_bytes();

}  // namespace normkit
