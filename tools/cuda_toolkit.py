"""Where the CUDA toolkit and NVIDIA's pip-installed CUDA pieces are, for setup.py and CMake.

    python tools/cuda_toolkit.py --cmake-args   # arguments for `cmake -S . -B build-cmake`
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile


def find_cuda_home():
    """The toolkit root. nvcc on PATH may be a wrapper script in another folder, so ask nvcc
    itself (its --dryrun prints TOP=<root>) instead of guessing from where it lies."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([nvcc, "--dryrun", "-c", os.path.join(tmp, "probe.cu")],
                             capture_output=True, text=True, check=False)
    match = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
    if match:
        return os.path.realpath(match.group(1).strip('"'))
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def nvidia_pip_file(torch_dir, pattern):
    """A file of the NVIDIA pip packages installed beside torch (site-packages/nvidia/...)."""
    site = os.path.dirname(torch_dir)
    found = sorted(glob.glob(os.path.join(site, "nvidia", "**", pattern), recursive=True))
    return found[0] if found else None


def pip_include_dir(torch_dir, cuda_home):
    """ATen's CUDA headers include cusparse.h and cublas_v2.h; a minimal toolkit lacks them,
    but the NVIDIA pip packages installed beside torch ship them."""
    if os.path.exists(os.path.join(cuda_home, "include", "cusparse.h")):
        return None
    header = nvidia_pip_file(torch_dir, "include/cusparse.h")
    return os.path.dirname(header) if header else None


def cmake_args():
    """find_package(Torch) for a CUDA build of torch needs the toolkit even for a CPU-only
    library: point it at the real toolkit, skip its GPU probe, and give it the nvrtc that only
    the pip package ships (as libnvrtc.so.<major>), and the pip CUDA headers for
    -DPYNOTES_WITH_CUDA=ON."""
    import torch
    args = [f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DPython3_EXECUTABLE={sys.executable}"]
    cuda_home = find_cuda_home()
    if torch.version.cuda and cuda_home:
        torch_dir = os.path.dirname(torch.__file__)
        args += [f"-DCUDAToolkit_ROOT={cuda_home}", f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}",
                 f"-DCMAKE_CUDA_COMPILER={os.path.join(cuda_home, 'bin', 'nvcc')}",
                 "-DTORCH_CUDA_ARCH_LIST=" + os.environ.get("TORCH_CUDA_ARCH_LIST", "8.0;9.0")]
        nvrtc = nvidia_pip_file(torch_dir, "libnvrtc.so*")
        if nvrtc and not glob.glob(os.path.join(cuda_home, "lib*", "libnvrtc.so*")):
            args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc}")
        include = pip_include_dir(torch_dir, cuda_home)
        if include:
            args.append(f"-DPYNOTES_CUDA_EXTRA_INCLUDE={include}")
    return args


if __name__ == "__main__":
    if sys.argv[1:] != ["--cmake-args"]:
        sys.exit(__doc__)
    print(" ".join(f"'{a}'" for a in cmake_args()))
