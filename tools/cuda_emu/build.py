"""Builds pynotes_cuda_emu: csrc's CUDA kernels as host C++ on the emulator (tools/cuda_emu).

    python tools/cuda_emu/build.py OUT_DIR [--no-sanitize]

writes the generated sources (generate.py) to OUT_DIR and the module to OUT_DIR/lib. Beside
the rewritten *_cuda.cu files it compiles the device-generic ops they register through (the
same *_ops.cpp / *_args.cpp the real CUDA build links) and the emulator's runtime. Importing
the module (after pynotes) registers torch.ops.pynotes_emu.*: every op with a CUDA kernel,
taking CPU tensors. By default everything is built with AddressSanitizer and
UndefinedBehaviorSanitizer, so that a kernel's out-of-bounds access or overflow stops the run
as compute-sanitizer would; load it with libasan preloaded (make test-cuda-emu does).
--no-sanitize builds it plain, for quicker runs while changing the emulator.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import generate  # noqa: E402

from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension  # noqa: E402

# What the CUDA files call on the host: the device-generic ops and their helpers.
DEVICE_GENERIC = ["group_norm/group_norm_args.cpp", "gbdt/gbdt_ops.cpp", "gcn/gcn_ops.cpp",
                  "iwae/iwae_ops.cpp", "lstm/lstm_ops.cpp", "common/matmul.cpp"]
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]


def main():
    args = [a for a in sys.argv[1:] if a != "--no-sanitize"]
    if len(args) != 1:
        sys.exit(__doc__)
    sanitize = "--no-sanitize" not in sys.argv
    out = os.path.abspath(args[0])
    manifest = generate.generate(out)
    cxx = ["-Wall", "-Wno-unknown-pragmas", "-fvisibility=hidden", "-DPYNOTES_CUDA_EMU"]
    cxx += SANITIZERS + ["-O1", "-g", "-fno-omit-frame-pointer"] if sanitize else ["-O2"]
    sources = (manifest["sources"] + [os.path.join(ROOT, "csrc", s) for s in DEVICE_GENERIC]
               + [os.path.join(HERE, "runtime.cpp")])
    ext = CppExtension(
        "pynotes_cuda_emu", sources,
        # The rewritten headers, then the emulator's CUDA stand-ins, then csrc's own.
        include_dirs=[os.path.join(out, "include"), os.path.join(HERE, "include"),
                      os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx}, extra_link_args=SANITIZERS if sanitize else [])
    setup(name="pynotes_cuda_emu", ext_modules=[ext], cmdclass={"build_ext": BuildExtension},
          script_args=["-q", "build_ext", "--build-lib", os.path.join(out, "lib"),
                       "--build-temp", os.path.join(out, "temp")])


if __name__ == "__main__":
    main()
