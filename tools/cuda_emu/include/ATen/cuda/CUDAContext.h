#pragma once
// cuda-emu's stand-in for ATen's CUDA context: the current stream and device properties.
// The SM count is a setting (pynotes_cuda_emu.configure), so tests cover both a small and a
// large GPU.
#include <c10/core/Device.h>

#include "cuda_emu.h"

namespace pynotes_emu {

// The fields of cudaDeviceProp the kernels' host code reads (a new one fails to compile).
struct DeviceProp {
  int multiProcessorCount;
};
const DeviceProp* device_properties();

}  // namespace pynotes_emu

using cudaDeviceProp = pynotes_emu::DeviceProp;

namespace c10 {
namespace cuda {
using CUDAStream = pynotes_emu::Stream;
// The emulated GPU's memory is the CPU's (generate.py turns at::kCUDA into at::kCPU), whose
// device has no index.
inline c10::DeviceIndex current_device() { return -1; }
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace cuda
}  // namespace c10

namespace at {
namespace cuda {
using c10::cuda::CUDAStream;
using c10::cuda::getCurrentCUDAStream;
inline const cudaDeviceProp* getCurrentDeviceProperties() {
  return pynotes_emu::device_properties();
}
}  // namespace cuda
}  // namespace at
