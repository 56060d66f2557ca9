#include "common/cpu_dispatch.h"

#include <ATen/Version.h>

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

}  // namespace pynotes
