#include "build_info.h"

#include <ATen/Parallel.h>

#include "common/cpu_dispatch.h"

namespace pynotes {

#ifdef PYNOTES_WITH_CUDA
int cuda_runtime_version();  // common/cuda_version.cu
#endif

BuildInfo build_info() {
  BuildInfo info{false, "", {}, cpu_capability_name(cpu_capability()), at::get_num_threads()};
#ifdef PYNOTES_WITH_CUDA
  info.with_cuda = true;
  const int version = cuda_runtime_version();
  info.cuda_version = std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
#ifdef PYNOTES_CUDA_ARCHS
  for (int arch : {PYNOTES_CUDA_ARCHS}) {
    info.cuda_archs.push_back(std::to_string(arch / 10) + "." + std::to_string(arch % 10));
  }
#endif
#endif
  return info;
}

}  // namespace pynotes
