"""Data-parallel GBDT over emulated network links, against the cost model: pynotes (2 processes
x 1 thread, benchmarks/gbdt_distributed.py's worker) and LightGBM's data-parallel learner, each
rank in its own Linux network namespace, the two joined by a veth pair whose bandwidth tc's
token bucket (tbf) limits on both ends.

    python -m benchmarks.gbdt_network [--rows 400000] [--rounds 30] [--gbps 0 10 1 0.1]

(as root; --gbps 0 leaves the link unlimited). For each link it measures the latency and
bandwidth of what the trees' collectives do (gloo sends and receives between the two
processes: 8 bytes each way, median of 300, and 2 MB, median of 15), then the fits. The model
(benchmarks/gbdt_cost_model.py) predicts a tree's time as rank 0's compute and waiting for the
other process on the unlimited link (its fit outside the collectives, and its time in them
beyond the model's communication) plus the communication of the levels its trees built, at
the link's measured latency and bandwidth, less the transfer that overlaps the build of the
process's own features. Writes the table into benchmarks/results/cpu-gbdt-distributed.md
(replacing an earlier one).

The kernel these results were measured on has no netem qdisc ("Specified qdisc kind is
unknown"), so a link's latency cannot be set: it is the veth's own, as measured.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

import torch

from benchmarks import gbdt_cost_model as model
from benchmarks.common import cpu_model, cpu_vendor, format_speedup
from benchmarks.gbdt_distributed import _fit, level_histograms
from pynotes.gbdt.estimators import _CUT_SAMPLE_ROWS as CUT_SAMPLE_ROWS

NAMESPACES = ["pynotes-gbdt-0", "pynotes-gbdt-1"]
DEVICES = ["pynotes-v0", "pynotes-v1"]
ADDRESSES = ["10.77.0.1", "10.77.0.2"]
SECTION = "## Emulated links (benchmarks/gbdt_network.py)"

_PROBE = r"""
import datetime, json, os, statistics, time
import torch, torch.distributed as dist
rank = int(os.environ["RANK"])
dist.init_process_group("gloo", init_method=f"tcp://{os.environ['MASTER_ADDR']}:"
                        + os.environ["MASTER_PORT"], rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))


def exchange(send, receive):  # what the trees' collectives do (pynotes/gbdt/distributed.py)
    work = dist.isend(send, 1 - rank)
    dist.recv(receive, 1 - rank)
    work.wait()


def seconds(n, repeats):
    send, receive, times = torch.zeros(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64), []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        exchange(send, receive)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


latency = seconds(1, 300)
big = 2 ** 18  # 2 MB each way, a level's histograms of case (a)
print(json.dumps({"latency_us": latency * 1e6,
                  "gbps": big * 8 * 8 / (seconds(big, 15) - latency) / 1e9}))
dist.destroy_process_group()
"""


def sh(*command):
    subprocess.run(command, check=True)


def setup():
    teardown()
    for ns in NAMESPACES:
        sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", DEVICES[0], "type", "veth", "peer", "name", DEVICES[1])
    for ns, dev, address in zip(NAMESPACES, DEVICES, ADDRESSES):
        sh("ip", "link", "set", dev, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def teardown():
    for ns in NAMESPACES:
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def limit(gbps):
    """Both ends of the link at `gbps` (0: unlimited)."""
    for ns, dev in zip(NAMESPACES, DEVICES):
        subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"],
                       stderr=subprocess.DEVNULL)
        if gbps:
            burst = max(64 * 1024, int(gbps * 1e9 / 8 / 250))  # a 4 ms tick's worth
            sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate",
               f"{gbps * 1e3:g}mbit", "burst", str(burst), "latency", "100ms")


def network():
    return ([["ip", "netns", "exec", ns] for ns in NAMESPACES], ADDRESSES, DEVICES)


def probe():
    prefixes, addresses, devices = network()
    env = dict(os.environ, MASTER_ADDR=addresses[0], MASTER_PORT="29517")
    procs = [subprocess.Popen(prefixes[r] + [sys.executable, "-c", _PROBE],
                              env=dict(env, RANK=str(r), GLOO_SOCKET_IFNAME=devices[r]),
                              stdout=subprocess.PIPE, text=True) for r in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0].strip().splitlines()[-1]) for p in procs]
    return outs[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gbps", type=float, nargs="+", default=[0, 10, 1, 0.1])
    parser.add_argument("--no-lightgbm", action="store_true")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                      "cpu-gbdt-distributed.md"))
    args = parser.parse_args()
    from benchmarks.gbdt import make_data
    X, _, y, _ = make_data("a")
    X, y = X[:args.rows], y[:args.rows]
    features = X.shape[1]
    libraries = ["pynotes"] + ([] if args.no_lightgbm else ["LightGBM"])
    setup()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            np.save(os.path.join(folder, "X.npy"), X)
            np.save(os.path.join(folder, "y.npy"), y)
            os.chmod(folder, 0o755)
            for gbps in args.gbps:
                limit(gbps)
                link = probe()
                runs = {lib: [] for lib in libraries}
                for _ in range(args.repeats):
                    for lib in libraries:
                        path = os.path.join(folder, f"model-{lib}-{gbps:g}.json")
                        runs[lib].append((*_fit(lib, 2, 1, False, folder, args.rounds, path,
                                                network=network()), path))
                rows.append((gbps, link, runs))
                print(gbps, link, {k: [r[0] for r in v] for k, v in runs.items()}, flush=True)
            report = table(rows, features, args.rounds, args, X.itemsize)
    finally:
        teardown()
    print(report)
    write_section(args.out, report)


def table(rows, features, rounds, args, itemsize):
    """Measured and predicted seconds per tree on each link."""
    fastest = rows[0]
    built = level_histograms(fastest[2]["pynotes"][0][2])
    nodes = [1] + [2 * b for b in built[1:]]  # a level's nodes: its built and derived ones

    def per_tree(runs, key):
        return statistics.median(key(r) for r in runs) / rounds
    # From the unlimited link: rank 0's compute per tree, and its waiting for the other
    # process (its time in collectives beyond the model's communication). Each level's
    # transfer overlaps the build of the process's own features (half of the level's
    # histograms; the model's rows read per level times the fit's measured cost of a row).
    compute = per_tree(fastest[2]["pynotes"], lambda r: r[0] - r[1]["combining"])
    rows_read = [1.0] + [0.5] * (len(built) - 1)  # of a process's rows, per level
    build = [compute * share / sum(rows_read) / 2 for share in rows_read]

    # Once per fit, each process sends its share of the cut points' sample (gbdt/distributed.py,
    # Collective.cut_points: 200k rows in all).
    sample_bytes = min(args.rows, CUT_SAMPLE_ROWS) / 2 * features * itemsize

    def in_trees(link):  # the model's communication per tree, in the trees' collectives
        return model.tree_overhead(2, link["latency_us"]) + sum(
            model.communication(b, n, features, 2, link["gbps"], link["latency_us"],
                                overlap_s=o)[0]
            for b, n, o in zip(built, nodes, build))

    def sample(link):  # per tree, outside them (in the compute measured on the fastest link)
        return sample_bytes / (link["gbps"] * 1e9 / 8) / rounds
    hidden = sum(build)
    wait = per_tree(fastest[2]["pynotes"], lambda r: r[1]["combining"]) - in_trees(fastest[1])
    lines = [f"{cpu_model()} ({cpu_vendor()}, {os.cpu_count()} cores), torch "
             f"{torch.__version__}, LightGBM {lightgbm_version()}. "
             f"{args.rows // 1000}k x {features} rows (case (a)), depth 6, {args.rounds} "
             f"rounds, {args.repeats} runs per link (medians), 2 processes x 1 thread in "
             "separate network namespaces joined by a veth pair (tc tbf on both ends; no "
             "netem in this kernel, so latency is the link's own). Predicted = rank 0's "
             f"compute per tree ({compute * 1e3:.1f} ms) and its waiting for the other process "
             f"({wait * 1e3:.1f} ms: time in collectives beyond the model's), both measured on "
             "the unlimited link, + the cost model's communication for the levels built "
             f"(histograms per level {', '.join(f'{b:g}' for b in built)}) at the link's "
             "measured latency and bandwidth (of 2 MB sent each way: tbf delivers less than "
             "its nominal rate), less the transfer that overlaps the build of the process's "
             f"own features ({hidden * 1e3:.1f} ms at most: half the levels' compute), and "
             f"the fit's exchange of the cut points' sample ({sample_bytes / 1e6:.0f} MB sent "
             "by each process) spread over the trees.", "",
             "| link | measured latency | measured bandwidth | pynotes ms / tree | in "
             "collectives ms / tree | model's communication ms / tree | predicted ms / tree "
             "| measured / predicted | LightGBM ms / tree | pynotes vs LightGBM |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for gbps, link, runs in rows:
        comm = in_trees(link) + sample(link)
        predicted = compute - sample(fastest[1]) + wait + comm
        ours = per_tree(runs["pynotes"], lambda r: r[0])
        in_collectives = per_tree(runs["pynotes"], lambda r: r[1]["combining"])
        theirs = per_tree(runs["LightGBM"], lambda r: r[0]) if runs.get("LightGBM") else None
        lines.append(
            f"| {'unlimited' if not gbps else f'{gbps:g} Gb/s'} | {link['latency_us']:.0f} µs "
            f"| {link['gbps']:.2f} Gb/s | {ours * 1e3:.1f} | {in_collectives * 1e3:.1f} "
            f"| {comm * 1e3:.1f} | {predicted * 1e3:.1f} | {ours / predicted:.2f} | "
            + (f"{theirs * 1e3:.1f} | {format_speedup(theirs / ours)} |" if theirs else "| |"))
    return "\n".join(lines)


def lightgbm_version():
    try:
        import lightgbm
        return lightgbm.__version__
    except ImportError:
        return "not installed"


def write_section(path, report):
    text = open(path).read() if os.path.exists(path) else ""
    text = text.split("\n" + SECTION)[0].rstrip("\n")
    with open(path, "w") as f:
        f.write(f"{text}\n\n{SECTION}\n\n{report}\n")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("gbdt_network: needs root (network namespaces, veth, tc)")
    main()
