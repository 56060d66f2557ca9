#pragma once
// cuda-emu's stand-in for c10's CUDA error checks. A launch that the GPU would refuse stops
// in the launch itself; the check records that the launch was checked (the convention every
// launch follows, which the tests hold the kernels to).
#include "cuda_emu.h"

#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::pynotes_emu::detail::kernel_launch_check()
