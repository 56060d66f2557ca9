#pragma once
// Facts about this build of the pynotes kernels, for users' bug reports and benchmark records.
#include <string>
#include <vector>

namespace pynotes {

struct BuildInfo {
  bool with_cuda;                // CUDA kernels compiled in
  std::string cuda_version;      // CUDA runtime the kernels were compiled against ("13.0"), or ""
  std::vector<std::string> cuda_archs;  // compute capabilities compiled for ("8.0", "9.0")
  std::string cpu_capability;   // instruction set of the CPU kernels in use (DEFAULT/AVX2/AVX512)
  int num_threads;               // threads the CPU kernels use (at::get_num_threads())
};

BuildInfo build_info();

}  // namespace pynotes
