"""Timing, machine description and reporting shared by every benchmark module.

Method: each case times the anchor (what users run today) and pynotes in the same process,
alternating one call of each per round so drift in the machine's speed hits both alike; after
warm-up, the median of the rounds is reported (CUDA events on GPU, perf_counter on CPU). For
memory-bound ops the achieved bandwidth (the op's minimal bytes moved / time) is reported as a
fraction of this machine's copy bandwidth, measured once per run.

On CPU, freed memory is kept in the process (glibc: no mmap'd blocks, no trimming), as in a
training loop's steady state. Otherwise each large allocation may get fresh pages from the OS,
which zeroes them (about 1 ms per 8 MB here), and that lands on the anchor or on pynotes
depending only on allocation order.
"""
import ctypes
import ctypes.util
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import time

import torch

import pynotes


@dataclasses.dataclass
class Result:
    op: str
    case: str         # shape, dtype, layout
    variant: str      # e.g. "forward", "forward+backward"
    anchor: str       # what pynotes is compared with
    anchor_ms: float
    pynotes_ms: float
    min_bytes: int = 0  # bytes an ideal kernel moves (0: not memory-bound)
    note: str = ""      # e.g. the quality of both results (test AUC)

    @property
    def speedup(self):
        return self.anchor_ms / self.pynotes_ms

    def bandwidth_fraction(self, copy_gbps):
        if not self.min_bytes:
            return None
        return self.min_bytes / (self.pynotes_ms * 1e-3) / 1e9 / copy_gbps


def keep_freed_memory():
    """Tells glibc malloc to serve every allocation from its heap and never return freed memory
    to the OS (see the module docstring). Returns whether it could."""
    libc_name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or not libc_name:
        return False
    libc = ctypes.CDLL(libc_name)
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def release_freed_memory():
    """Gives memory the process has freed back to the OS between cases of a sweep: blocks held
    by pynotes.memory's cache, and free pages inside glibc's heap (keep_freed_memory keeps
    them there: with tensors of up to 1 GB in a sweep, the heap grew past 24 GB)."""
    gc.collect()
    if pynotes.memory.cpu_cache_info().get("enabled"):
        pynotes.memory.empty_cpu_cache()
    libc_name = ctypes.util.find_library("c")
    if platform.system() == "Linux" and libc_name:
        ctypes.CDLL(libc_name).malloc_trim(0)


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_pair(anchor, candidate, device, warmup=5, rounds=51):
    """Median milliseconds of anchor() and candidate(), measured in alternating rounds."""
    for _ in range(warmup):
        anchor()
        candidate()
    synchronize(device)
    times = ([], [])
    for _ in range(rounds):
        for fn, out in ((anchor, times[0]), (candidate, times[1])):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def timed_pair(anchor, candidate, device, budget_ms=1500, min_rounds=3, max_rounds=25):
    """time_pair with as many rounds as budget_ms allows (min_rounds to max_rounds), after one
    warm-up round, so that long cases do not dominate a sweep's run time."""
    first, second = time_pair(anchor, candidate, device, warmup=1, rounds=1)
    rounds = int(min(max_rounds, max(min_rounds, budget_ms / max(first, second, 1e-3))))
    return time_pair(anchor, candidate, device, warmup=1, rounds=rounds)


def copy_bandwidth_gbps(device, nbytes=None):
    """Bytes read + written per second by a large tensor copy (the practical memory roof).
    On CPU the buffer is 4x the last-level cache, so the copy runs from DRAM."""
    if nbytes is None:
        nbytes = 2 * 1024**3 if device == "cuda" else 4 * last_level_cache_bytes()
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms, _ = time_pair(lambda: dst.copy_(src), lambda: None, device, warmup=2, rounds=9)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def last_level_cache_bytes():
    try:
        sizes = []
        base = "/sys/devices/system/cpu/cpu0/cache"
        for index in os.listdir(base):
            with open(os.path.join(base, index, "size")) as f:
                text = f.read().strip()
            sizes.append(int(text[:-1]) * 1024 if text.endswith("K") else int(text))
        return max(sizes)
    except (OSError, ValueError):
        return 32 * 1024**2


def _cpuinfo(field):
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_vendor():
    return _cpuinfo("vendor_id") or platform.machine()


def cpu_model():
    """The CPU's name and, on x86, its family and model numbers: a VM's name may be only
    "Intel(R) Xeon(R) Processor" or "AMD EPYC", which does not tell the generations apart."""
    name = _cpuinfo("model name") or platform.processor() or platform.machine()
    family, model = _cpuinfo("cpu family"), _cpuinfo("model\t")
    return f"{name} (family {family} model {model})" if family and model else name


def machine_info(device):
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": device,
        "cpu": cpu_model(),
        "cpu_vendor": cpu_vendor(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "pynotes": pynotes.backend_info(),
        "malloc_keeps_freed_memory": keep_freed_memory() if device == "cpu" else None,
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 1024**3, 1)
    return info


def format_speedup(speedup):
    """Losing cells (pynotes slower than the anchor) in bold with a marker, to be found."""
    return f"{speedup:.2f}x" if speedup >= 1.0 else f"**{speedup:.2f}x LOSES**"


def format_table(results, copy_gbps):
    lines = ["| op | case | variant | anchor | anchor ms | pynotes ms | speedup | % of copy BW "
             "| note |",
             "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        frac = r.bandwidth_fraction(copy_gbps)
        lines.append(f"| {r.op} | {r.case} | {r.variant} | {r.anchor} | {r.anchor_ms:.3f} | "
                     f"{r.pynotes_ms:.3f} | {format_speedup(r.speedup)} | "
                     f"{'' if frac is None else f'{100 * frac:.0f}%'} | {r.note} |")
    return "\n".join(lines)


def describe_machine(machine, copy_gbps):
    be = machine["pynotes"]
    where = machine.get("gpu", machine["cpu"])
    bandwidth = "not measured" if copy_gbps is None else f"{copy_gbps:.1f} GB/s"
    vendor = f", {machine['cpu_vendor']}" if machine.get("cpu_vendor") else ""
    return (f"{machine['date']}; {where}; CPU {machine['cpu']}{vendor} ({machine['cpu_cores']} cores, "
            f"{machine['torch_threads']} torch threads); torch {machine['torch']}; pynotes CPU "
            f"kernels {be['cpu_capability']}, CUDA kernels {'yes' if be['with_cuda'] else 'no'}; "
            f"copy bandwidth {bandwidth}")


def write_reports(results, machine, copy_gbps, out_dir, name, cases=None):
    """benchmarks/results/<name>.json, .md and (with matplotlib) .png. With `cases` (a listing,
    python -m benchmarks --list), the cases a run would time instead, and no chart."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    rows = [{**dataclasses.asdict(r), "speedup": r.speedup,
             "bandwidth_fraction": r.bandwidth_fraction(copy_gbps)} for r in results]
    report = {"machine": machine, "copy_bandwidth_gbps": copy_gbps, "results": rows}
    if cases is not None:
        report["cases"] = cases
        body = "Cases a run would time (listed, not run):\n\n" + "".join(
            f"- {case}\n" for case in cases)
    else:
        body = (f"Speedup = anchor time / pynotes time (median of alternating rounds after "
                f"warm-up). % of copy BW = minimal bytes moved / time / copy bandwidth. "
                f"Cells where pynotes loses (speedup < 1.0x): "
                f"{sum(r.speedup < 1.0 for r in results)} of {len(results)}, marked LOSES.\n\n"
                f"{format_table(results, copy_gbps)}\n")
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(f"# pynotes benchmarks ({name})\n\n{describe_machine(machine, copy_gbps)}\n\n"
                f"{body}")
    written = [base + ".json", base + ".md"]
    if cases is not None:
        return written
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no chart; pip install matplotlib)")
        return written
    labels = [f"{r.op} {r.case}\n{r.variant} vs {r.anchor}" for r in results]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(results) + 1.5))
    ax.barh(range(len(results)), [r.speedup for r in results], color="#3b7dd8")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(results)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over anchor (x)")
    ax.set_title(f"pynotes, {machine.get('gpu', machine['cpu'])}, "
                 f"{machine['torch_threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(base + ".png", dpi=110)
    plt.close(fig)
    return written + [base + ".png"]
