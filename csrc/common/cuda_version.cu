#include <cuda_runtime_api.h>

namespace pynotes {

// The CUDA runtime version these kernels were compiled against (e.g. 13000 for 13.0).
int cuda_runtime_version() { return CUDART_VERSION; }

}  // namespace pynotes
