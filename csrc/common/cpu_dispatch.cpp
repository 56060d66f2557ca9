#include "common/cpu_dispatch.h"

#include <ATen/Version.h>

#include <unistd.h>

#include <fstream>
#include <string>

namespace pynotes {

CpuCapability cpu_capability() {
  static const CpuCapability capability = [] {
#ifdef PYNOTES_X86_KERNELS
    const std::string torch_choice = at::get_cpu_capability();
    if (torch_choice == "AVX512") return CpuCapability::AVX512;
    if (torch_choice == "AVX2") return CpuCapability::AVX2;
#endif
    return CpuCapability::DEFAULT;
  }();
  return capability;
}

const char* cpu_capability_name(CpuCapability capability) {
  switch (capability) {
    case CpuCapability::AVX512: return "AVX512";
    case CpuCapability::AVX2: return "AVX2";
    default: return "DEFAULT";
  }
}

// sysfs first: glibc's sysconf reported 320 MiB for the 32 MiB L3 of an AMD EPYC VM.
int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int best_level = 0;
    int64_t best = 0;
    for (int i = 0; i < 16; ++i) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i);
      std::ifstream level_file(dir + "/level"), size_file(dir + "/size"), type_file(dir + "/type");
      int level = 0;
      std::string size, type;
      if (!(level_file >> level) || !(size_file >> size) || !(type_file >> type)) break;
      if (type == "Instruction" || level < best_level || size.empty()) continue;
      int64_t value = std::stoll(size);  // "32768K"
      const char unit = size.back();
      value *= unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : 1;
      best_level = level;
      best = value;
    }
    if (best > 0) return best;
#ifdef _SC_LEVEL3_CACHE_SIZE
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (l3 > 0) return static_cast<int64_t>(l3);
#endif
    return int64_t(32) << 20;
  }();
  return bytes;
}

}  // namespace pynotes
