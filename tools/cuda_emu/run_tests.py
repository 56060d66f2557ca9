"""Runs tests/test_cuda_emu.py on the emulated CUDA build (PYNOTES_CUDA_EMU: its lib folder)
and ends with one line:

    cuda-emu: <E>/<T> __global__ kernels executed; <P> passed, <F> failed

T counts the __global__ kernels of csrc/ (generate.py's manifest), E those launched at least
once during the run. The exit status is non-zero when a test failed or a kernel never ran.
"""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)  # pynotes, built in place


class Count:
    def __init__(self):
        self.passed = self.failed = 0

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed += 1
        elif report.passed and report.when == "call":
            self.passed += 1


def main():
    lib = os.environ["PYNOTES_CUDA_EMU"]
    count = Count()
    status = pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", ROOT,
                          os.path.join(ROOT, "tests", "test_cuda_emu.py"), *sys.argv[1:]],
                         plugins=[count])
    with open(os.path.join(lib, os.pardir, "manifest.json")) as f:
        kernels = [k["name"] for k in json.load(f)["kernels"]]
    emu = sys.modules.get("pynotes_cuda_emu")
    launched = set(emu.launch_counts()) if emu is not None else set()
    missing = [k for k in kernels if k not in launched]
    if missing:
        print(f"cuda-emu: never launched: {', '.join(missing)}")
    print(f"cuda-emu: {len(kernels) - len(missing)}/{len(kernels)} __global__ kernels executed; "
          f"{count.passed} passed, {count.failed} failed")
    sys.exit(1 if status != 0 or missing else 0)


if __name__ == "__main__":
    main()
