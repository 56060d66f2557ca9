"""Writes the emulated CUDA sources: csrc's CUDA files as host C++ for tools/cuda_emu.

The kernels are not copied by hand: each file is rewritten mechanically, so a change to a
kernel changes what the emulator runs. The rewrites, and nothing else:

  kernel<args><<<grid, block, shared, stream>>>(...)
      ::pynotes_emu::launch("kernel", BOUND, [](auto&... p) { kernel<args>(p...); },
                            grid, block, shared, stream)(...)
      (BOUND: the kernel's __launch_bounds__, or 0; the kernel's template arguments are still
      deduced from the launch's arguments where it gives none)
  __shared__ T name[n];
      auto& name = ::pynotes_emu::shared<T[n]>(<a key unique to the declaration>);
  TORCH_LIBRARY_IMPL(pynotes, CUDA, m)   ->  TORCH_LIBRARY_IMPL(pynotes_emu, CPU, m)
  at::kCUDA                              ->  at::kCPU   (the emulated GPU's memory)

plus, where FAULTS says so, a fault that is off unless switched on at run time. Each file
starts with `#include "cuda_emu.h"` and a #line directive, and every rewrite keeps the line
count, so compiler messages, sanitizer reports and the emulator's own errors name the lines
of the original file. Headers with CUDA code (*.cuh) are written under include/, which comes
before csrc/ on the include path. manifest.json lists the __global__ kernels of csrc/ (what
the run's "E/T kernels executed" line counts) and the faults.

    python tools/cuda_emu/generate.py OUT_DIR
"""
import dataclasses
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
SOURCE_EXTENSIONS = (".cu", ".cuh", ".h", ".cpp")


@dataclasses.dataclass(frozen=True)
class Fault:
    """A bug the harness must catch: `original` (exactly once in `file`) becomes `faulty`,
    in which {on} is true while the fault is switched on (pynotes_cuda_emu.set_fault)."""
    name: str
    file: str
    original: str
    faulty: str
    tests: str      # pytest -k expression of tests/test_cuda_emu.py that must then fail
    evidence: str   # a regex their output must show: how the fault was caught
    description: str


FAULTS = [
    Fault("block_reduce_barrier", "common/cuda_utils.cuh",
          "  if (lane == 0) partial[warp] = v;\n  __syncthreads();\n",
          "  if (lane == 0) partial[warp] = v;\n  if (!{on}) __syncthreads();\n",
          "test_group_norm_forward and large", r"Mismatched elements|nan",
          "group norm's block reduction (block_reduce) without its __syncthreads"),
    Fault("gcn_spmm_mask", "gcn/gcn_cuda.cu",
          "  const unsigned mask = group_mask<kLanes>();\n  const int64_t F = args.features;\n"
          "  const int64_t j",
          "  const unsigned mask = group_mask<kLanes>() >> ({on} ? 1 : 0);\n"
          "  const int64_t F = args.features;\n  const int64_t j",
          "test_gcn_propagate", r"does not name it|not in the mask",
          "the GCN SpMM's shuffle mask one lane short"),
    Fault("gcn_sddmm_full_mask", "gcn/gcn_cuda.cu",
          "  const unsigned mask = group_mask<kLanes>();\n  const int64_t F = args.features;\n"
          "  const I* col",
          "  const unsigned mask = {on} ? 0xffffffffu : group_mask<kLanes>();\n"
          "  const int64_t F = args.features;\n  const I* col",
          "test_gcn_propagate and weighted", r"has exited|disagree|deadlock",
          "the GCN SDDMM's shuffles with a full mask, where lane groups run apart"),
    Fault("divergent_barrier", "group_norm/group_norm_cuda.cu",
          "  tile[threadIdx.y][threadIdx.x] = s;\n  __syncthreads();\n",
          "  tile[threadIdx.y][threadIdx.x] = s;\n  if (c < geo.C || !{on}) __syncthreads();\n",
          "test_group_norm_backward and channels_last", r"exited while \d+ threads wait",
          "group norm's channels-last backward barrier skipped by the threads past the channels"),
    Fault("histogram_bin", "gbdt/gbdt_cuda.cu",
          "cells + (f * B + row[f]) * 2;",
          "cells + (f * B + row[f] + ({on} ? 1 : 0)) * 2;",
          "test_gbdt_histogram", r"Mismatched elements|AddressSanitizer",
          "the GBDT histogram's shared-memory bin index off by one"),
    Fault("grid_stride_bound", "common/cuda_utils.cuh",
          "i < (n); \\\n",
          "i < (n) + ({on} ? 1 : 0); \\\n",
          "test_lstm_cell", r"AddressSanitizer: heap-buffer-overflow",
          "the grid-stride loop one item past the end (every kernel that uses it)"),
    Fault("unchecked_launch", "iwae/iwae_cuda.cu",
          "at::cuda::getCurrentCUDAStream()>>>(a);\n    C10_CUDA_KERNEL_LAUNCH_CHECK();\n",
          "at::cuda::getCurrentCUDAStream()>>>(a);\n"
          "    if (!{on}) C10_CUDA_KERNEL_LAUNCH_CHECK();\n",
          "test_iwae and finite", r"without C10_CUDA_KERNEL_LAUNCH_CHECK.*backward_kernel",
          "the IWAE backward launch without its C10_CUDA_KERNEL_LAUNCH_CHECK"),
    Fault("channels_last_block", "group_norm/group_norm_cuda.cu",
          "dim3(kTileChannels, kRows), 0, stream>>>",
          "dim3(kTileChannels, kRows * ({on} ? 2 : 1)), 0, stream>>>",
          "test_group_norm_backward and channels_last", r"__launch_bounds__\(256\)",
          "group norm's channels-last backward launched with twice its launch bound"),
]


def blank_comments_and_strings(text):
    """`text` with comments and the insides of string and character literals replaced by
    spaces (newlines kept): positions stay those of `text`, for searching code only."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i += 1  # keep the quotes
        else:
            i += 1
            continue
        for k in range(i, min(j, n)):
            if out[k] != "\n":
                out[k] = " "
        i = j + 1 if c in "\"'" else j
    return "".join(out)


KERNEL_RE = re.compile(
    r"__global__\s+(?:__launch_bounds__\s*\((?P<b1>[^()]*(?:\([^()]*\)[^()]*)*)\)\s*)?"
    r"void\s+(?:__launch_bounds__\s*\((?P<b2>[^()]*(?:\([^()]*\)[^()]*)*)\)\s*)?"
    r"(?P<name>\w+)\s*\(")
SHARED_RE = re.compile(r"__shared__\s+(?P<type>[^;{}()]+?)\s+(?P<name>\w+)\s*"
                       r"(?P<dims>(?:\[[^\]]+\]\s*)*);")


def kernels_of(path):
    """(name, line, launch bound expression or None) of each __global__ kernel in `path`."""
    text = open(path).read()
    code = blank_comments_and_strings(text)
    found = []
    for m in KERNEL_RE.finditer(code):
        bound = m.group("b1") or m.group("b2")
        found.append((m.group("name"), code.count("\n", 0, m.start()) + 1,
                      bound.strip() if bound else None))
    if code.count("__global__") != len(found):
        sys.exit(f"generate.py: {path}: a __global__ declaration it cannot parse")
    return found


def expression_start(code, end):
    """Start of the kernel expression `name` or `ns::name<args>` that ends at `end`."""
    i = end
    while i > 0 and code[i - 1].isspace():
        i -= 1
    if code[i - 1] == ">":
        depth = 0
        while i > 0:
            i -= 1
            if code[i] == ">":
                depth += 1
            elif code[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (code[i - 1].isalnum() or code[i - 1] in "_:"):
        i -= 1
    return i


def launch_end(code, start):
    """Index of the `>>>` that closes the launch configuration opened at `start`."""
    depth = 0
    i = start
    while i < len(code):
        if code[i] in "([{":
            depth += 1
        elif code[i] in ")]}":
            depth -= 1
        elif depth == 0 and code.startswith(">>>", i):
            return i
        i += 1
    raise ValueError("unterminated <<<")


def same_lines(old, new):
    """`new` padded with newlines so that it spans as many lines as `old`."""
    missing = old.count("\n") - new.count("\n")
    if missing < 0:
        raise ValueError(f"a rewrite adds lines: {old!r}")
    return new + "\n" * missing


def rewrite(text, rel, bounds, faults):
    """The emulated form of csrc file `rel` (text); `bounds`: kernel name -> bound."""
    for fault in faults:
        if text.count(fault.original) != 1:
            sys.exit(f"generate.py: fault {fault.name}: its original text must occur exactly once "
                     f"in csrc/{rel} (the kernel changed? update FAULTS)")
        on = f'::pynotes_emu::detail::fault_active("{fault.name}")'
        text = text.replace(fault.original, same_lines(fault.original,
                                                       fault.faulty.replace("{on}", on)))
    edits = []  # (start, end, replacement) in `text`
    code = blank_comments_and_strings(text)
    for m in re.finditer("<<<", code):
        start = expression_start(code, m.start())
        kernel = code[start:m.start()].strip()
        name = re.sub(r"<.*", "", kernel, flags=re.S).split("::")[-1].strip()
        if name not in bounds:
            sys.exit(f"generate.py: csrc/{rel}: launch of {name}, which is not a __global__ "
                     "kernel of csrc/")
        end = launch_end(code, m.end())
        config = text[m.end():end]
        bound = bounds[name] or "0"
        new = (f'::pynotes_emu::launch("{name}", {bound}, [](auto&... p) {{ {kernel}(p...); }}, '
               f"{config})")
        edits.append((start, end + 3, same_lines(text[start:end + 3], new)))
    for m in SHARED_RE.finditer(code):
        new = (f"auto& {m.group('name')} = ::pynotes_emu::shared<{m.group('type')}"
               f"{m.group('dims').strip()}>([] {{ static const char key = 0; return &key; }}());")
        edits.append((m.start(), m.end(), same_lines(text[m.start():m.end()], new)))
    for m in re.finditer(r"TORCH_LIBRARY_IMPL\s*\(\s*pynotes\s*,\s*CUDA\s*,", code):
        edits.append((m.start(), m.end(), "TORCH_LIBRARY_IMPL(pynotes_emu, CPU,"))
    for m in re.finditer(r"\bat::kCUDA\b", code):
        edits.append((m.start(), m.end(), "at::kCPU"))
    edits.sort()
    for (s1, e1, _), (s2, _, _) in zip(edits, edits[1:]):
        if s2 < e1:
            sys.exit(f"generate.py: csrc/{rel}: overlapping rewrites at offset {s2}")
    for start, end, new in reversed(edits):
        text = text[:start] + new + text[end:]
    left = blank_comments_and_strings(text)
    for token in ("<<<", "__shared__", "TORCH_LIBRARY_IMPL(pynotes,"):
        if token in left:
            line = left.count("\n", 0, left.index(token)) + 1
            sys.exit(f"generate.py: csrc/{rel}:{line}: {token} left that the emulator cannot "
                     "take (static __shared__ arrays and <<<>>> launches only)")
    return f'#include "cuda_emu.h"\n#line 1 "csrc/{rel}"\n' + text


def write_if_changed(path, text):
    """Keeps an unchanged file's time stamp, so that a rebuild recompiles only what changed."""
    if os.path.exists(path) and open(path).read() == text:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def generate(out):
    sources = sorted(os.path.relpath(os.path.join(d, f), CSRC)
                     for d, _, files in os.walk(CSRC) for f in files
                     if f.endswith(SOURCE_EXTENSIONS))
    kernels = []
    for rel in sources:
        kernels += [dict(name=n, file=f"csrc/{rel}", line=line, bound=b)
                    for n, line, b in kernels_of(os.path.join(CSRC, rel))]
    names = [k["name"] for k in kernels]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        sys.exit(f"generate.py: __global__ kernels share names {duplicates}: the emulator counts "
                 "launches by name")
    bounds = {k["name"]: k["bound"] for k in kernels}
    emulated, headers, rewritten = [], [], set()
    for rel in sources:
        text = open(os.path.join(CSRC, rel)).read()
        code = blank_comments_and_strings(text)
        cuda_code = any(t in code for t in ("__global__", "__shared__", "<<<", "__device__"))
        if rel.endswith(".cu"):
            if not cuda_code and "TORCH_LIBRARY_IMPL" not in code:
                continue  # host-only CUDA glue (cuda_version.cu): nothing to emulate
            dest = os.path.join(out, "src", rel[:-3] + ".cpp")
            emulated.append(dest)
        elif rel.endswith(".cuh"):
            dest = os.path.join(out, "include", rel)
            headers.append(dest)
        elif "__global__" in code or "<<<" in code or "__shared__" in code:
            sys.exit(f"generate.py: csrc/{rel}: CUDA code outside .cu/.cuh files")
        else:
            continue
        faults = [f for f in FAULTS if f.file == rel]
        rewritten.add(rel)
        write_if_changed(dest, rewrite(text, rel, bounds, faults))
    missing = {f.file for f in FAULTS} - rewritten
    if missing:
        sys.exit(f"generate.py: FAULTS name files that are not emulated: {sorted(missing)}")
    manifest = dict(kernels=kernels, sources=emulated, headers=headers,
                    faults=[dataclasses.asdict(f) for f in FAULTS])
    write_if_changed(os.path.join(out, "manifest.json"), json.dumps(manifest, indent=1))
    return manifest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    m = generate(os.path.abspath(sys.argv[1]))
    print(f"cuda-emu: {len(m['sources'])} kernel files and {len(m['headers'])} headers rewritten, "
          f"{len(m['kernels'])} __global__ kernels, {len(m['faults'])} injectable faults")
