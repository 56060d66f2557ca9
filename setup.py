"""Builds pynotes._C: the C++ kernels always, the CUDA kernels when a toolkit is there.

Environment:
  FORCE_CUDA=1           build the CUDA kernels even without a visible GPU (CI does this)
  FORCE_CPU=1            never build the CUDA kernels
  TORCH_CUDA_ARCH_LIST   CUDA architectures; without a GPU the default is DEFAULT_CUDA_ARCHS
  MAX_JOBS               parallel compile jobs (ninja)
  CUDA_HOME              CUDA toolkit root; found from nvcc when unset
  PYNOTES_SANITIZE=1     the C++ code with AddressSanitizer and UndefinedBehaviorSanitizer
                         (-O1 -g; load it with libasan preloaded: `make sanitize`)
"""
import glob
import os
import platform
import re
import sys

from setuptools import setup

# Architectures for a build on a machine without a GPU: A100 and H100. Each extra arch adds
# a full compile of every .cu file, so the list stays short; set TORCH_CUDA_ARCH_LIST for others.
DEFAULT_CUDA_ARCHS = "8.0;9.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from cuda_toolkit import find_cuda_home, pip_include_dir  # noqa: E402


def env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


# torch.utils.cpp_extension reads CUDA_HOME once, at import: set it first.
_cuda_home = find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def want_cuda():
    if env_flag("FORCE_CPU"):
        return False
    if env_flag("FORCE_CUDA"):
        if torch.version.cuda is None:
            raise RuntimeError("FORCE_CUDA=1 but this torch is a CPU-only build "
                               f"({torch.__version__}); install a CUDA build of torch")
        if _cuda_home is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: put nvcc on PATH "
                               "or set CUDA_HOME")
        return True
    return torch.version.cuda is not None and _cuda_home is not None and torch.cuda.is_available()


def cuda_arch_list():
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not archs:  # a GPU is present: torch builds for the GPUs it sees
        archs = ";".join(f"{a}.{b}" for a, b in
                         {torch.cuda.get_device_capability(i)
                          for i in range(torch.cuda.device_count())})
    return archs


# Each csrc/**/*_cpu_kernel.cpp is compiled once per instruction set, into namespace
# pynotes::<ISA>, with the flags ATen uses for its own kernels (csrc/common/cpu_dispatch.h).
IS_X86 = platform.machine().lower() in ("x86_64", "amd64")
CPU_ISA_FLAGS = {
    "DEFAULT": [],
    "AVX2": ["-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mlzcnt"],
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-mbmi", "-mbmi2", "-mlzcnt"],
} if IS_X86 else {"DEFAULT": []}


class BuildExt(BuildExtension):
    def build_extension(self, ext):
        kernels = [s for s in ext.sources if s.endswith("_cpu_kernel.cpp")]
        ext.sources = [s for s in ext.sources if s not in kernels]
        for isa, isa_flags in CPU_ISA_FLAGS.items():
            flags = dict(ext.extra_compile_args)
            # ATen's AVX512 partial loads and conversions trip false -Wmaybe-uninitialized and
            # -Wuninitialized (the _mm512_undefined_* operands in GCC's own intrinsics headers);
            # -Wpsabi notes an ABI change for SIMD arguments, irrelevant to inline templates.
            flags["cxx"] = flags["cxx"] + [f"-DCPU_CAPABILITY={isa}", f"-DCPU_CAPABILITY_{isa}",
                                           "-Wno-maybe-uninitialized", "-Wno-uninitialized",
                                           "-Wno-psabi"] + isa_flags
            ext.extra_objects = list(ext.extra_objects or []) + self.compiler.compile(
                kernels, output_dir=os.path.join(self.build_temp, isa.lower()),
                macros=ext.define_macros, include_dirs=ext.include_dirs, debug=self.debug,
                extra_postargs=flags, depends=ext.depends)
        super().build_extension(ext)


def openmp_flags():
    # Compile the OpenMP pragmas in at::parallel_for, but link no OpenMP runtime of our own:
    # the symbols resolve to the libgomp that libtorch_cpu already loads (one thread pool).
    return ["-fopenmp"] if "OpenMP" in torch.__config__.parallel_info() else []


def extension():
    with_cuda = want_cuda()
    cpp_sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))  # python/module.cpp too
    cuda_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    headers = sorted(glob.glob("csrc/**/*.h", recursive=True) +
                     glob.glob("csrc/**/*.cuh", recursive=True))
    cxx_flags = ["-O3", "-Wall", "-Wno-unknown-pragmas", "-fvisibility=hidden"] + openmp_flags()
    macros = []
    kwargs = {}
    if env_flag("PYNOTES_SANITIZE"):
        sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        cxx_flags += sanitizers + ["-O1", "-g", "-fno-omit-frame-pointer"]
        kwargs["extra_link_args"] = sanitizers
    if with_cuda:
        archs = cuda_arch_list()
        # "8.0;9.0a+PTX" -> 80,90: a C++ initializer list (build_info.cpp), no string quoting.
        arch_ints = ",".join(f"{major}{minor}" for major, minor in
                             re.findall(r"(\d+)\.(\d+)", archs))
        macros += [("PYNOTES_WITH_CUDA", None)]
        kwargs["extra_compile_args"] = {
            # Not for nvcc, which splits option values at commas.
            "cxx": cxx_flags + [f"-DPYNOTES_CUDA_ARCHS={arch_ints}"],
            "nvcc": ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xcompiler",
                     "-fvisibility=hidden"],
        }
        ext = CUDAExtension("pynotes._C", cpp_sources + cuda_sources, include_dirs=[f"{ROOT}/csrc"],
                            define_macros=macros, depends=headers, **kwargs)
        extra = pip_include_dir(os.path.dirname(torch.__file__), _cuda_home)
        if extra:  # last, so the toolkit's own headers win where both have one
            ext.include_dirs.append(extra)
    else:
        ext = CppExtension("pynotes._C", cpp_sources, include_dirs=[f"{ROOT}/csrc"],
                           define_macros=macros, depends=headers,
                           extra_compile_args={"cxx": cxx_flags}, **kwargs)
    print(f"pynotes: building {'CPU + CUDA' if with_cuda else 'CPU only'} extension"
          + (f" for CUDA archs {os.environ['TORCH_CUDA_ARCH_LIST']} (CUDA_HOME={_cuda_home})"
             if with_cuda else ""))
    return ext


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt},
)
