"""Data-parallel gradient boosting (pynotes.gbdt on torch.distributed, gloo over 127.0.0.1):
2 processes with one thread each, each holding half the rows, against one process with one
thread (with float and with quantized gradients) and with 2 threads, on case (a) of
benchmarks/gbdt.py (500k x 50: 400k training rows, depth 6, 100 rounds; the quick run: 100k
rows, 20 rounds); and LightGBM's data-parallel learner on the same rows (2 processes x 1
thread against its 1 x 1, and ours against its 2 x 1) where LightGBM is installed. Each
configuration runs in fresh processes, the runs alternate, and a run's time is the slowest
process's fit (after a barrier for pynotes); the median of the runs is reported. Also what
rank 0 sends per tree (reduce-scattered histograms: (W - 1) / W of those built, with the split
exchange and the gradients' sizes) and the histograms built per tree level: the numbers of the
cost model of docs/performance.md. CPU only.
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from benchmarks.common import Result

_WORKER = r"""
import json, os, sys, time
import numpy as np
import torch
import torch.distributed as dist
from pynotes.gbdt import distributed as _gbdt_distributed
from pynotes.gbdt import GBDTClassifier

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
folder, rounds, model_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
threads, quantized = int(sys.argv[4]), sys.argv[5] == "1"
torch.set_num_threads(threads)
combining = [0.0, 0]  # seconds in the trees' collectives (waiting included), and their number
collective = _gbdt_distributed.Collective.collective


def timed(self, op, buffer):
    start = time.perf_counter()
    collective(self, op, buffer)
    combining[0] += time.perf_counter() - start
    combining[1] += 1


_gbdt_distributed.Collective.collective = timed
X, y = (np.load(os.path.join(folder, n + ".npy"), mmap_mode="r") for n in ("X", "y"))
begin, end = len(X) * rank // world, len(X) * (rank + 1) // world
X, y = np.ascontiguousarray(X[begin:end]), np.ascontiguousarray(y[begin:end])
if world > 1:
    import datetime
    address = os.environ.get("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", init_method=f"tcp://{address}:" + os.environ["MASTER_PORT"],
                            rank=rank, world_size=world, timeout=datetime.timedelta(minutes=5))
    dist.barrier()
model = GBDTClassifier(n_estimators=rounds, max_depth=6, learning_rate=0.1, n_jobs=threads,
                       use_quantized_grad=quantized)
start = time.perf_counter()
model.fit(X, y)
seconds = time.perf_counter() - start
if rank == 0:
    model.save_model(model_path)
print(json.dumps({"seconds": seconds, "sent_bytes": model.reduced_bytes_,
                  "combining": combining[0], "collectives": combining[1]}))
if world > 1:
    dist.destroy_process_group()
"""

# LightGBM's data-parallel learner over its own sockets on 127.0.0.1 (the same rows and
# settings: depth 6 with 63 leaves, learning rate 0.1, 255 bins).
_LIGHTGBM_WORKER = r"""
import json, os, sys, time
import numpy as np
import lightgbm

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
folder, rounds, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
ports = [int(p) for p in os.environ["LIGHTGBM_PORTS"].split(",")]
X, y = (np.load(os.path.join(folder, n + ".npy"), mmap_mode="r") for n in ("X", "y"))
begin, end = len(X) * rank // world, len(X) * (rank + 1) // world
X, y = np.ascontiguousarray(X[begin:end]), np.ascontiguousarray(y[begin:end])
addresses = os.environ.get("LIGHTGBM_ADDRS", ",".join(["127.0.0.1"] * world)).split(",")
network = {} if world == 1 else dict(
    tree_learner="data", num_machines=world, local_listen_port=ports[rank], time_out=5,
    machines=",".join(f"{a}:{p}" for a, p in zip(addresses, ports)))
model = lightgbm.LGBMClassifier(n_estimators=rounds, num_leaves=63, max_depth=6,
                                learning_rate=0.1, max_bin=255, n_jobs=threads, verbose=-1,
                                **network)
start = time.perf_counter()
model.fit(X, y)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds}))
"""


def cases(device, quick=True):
    if device != "cpu":
        return []
    rows = "100k rows, 20 rounds" if quick else "400k x 50, depth 6, 100 rounds"
    return [f"gbdt_distributed {rows}: 2 processes x 1 thread vs 1 process x 1 thread "
            "(float and quantized gradients) and x 2 threads; LightGBM data-parallel"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n):
    ports = set()
    while len(ports) < n:
        ports.add(_free_port())
    return sorted(ports)


def _fit(library, world, threads, quantized, folder, rounds, model_path, network=None):
    """One run: (seconds of the slowest process, what rank 0 printed: its bytes sent, seconds
    in and number of collectives). network (benchmarks/gbdt_network.py): per rank the command
    prefix, address and interface of an emulated link; else every rank on 127.0.0.1."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    prefixes, addresses, interfaces = network or ([[]] * world, ["127.0.0.1"] * world,
                                                  ["lo"] * world)
    env = dict(os.environ, WORLD_SIZE=str(world), MASTER_PORT=str(_free_port()),
               MASTER_ADDR=addresses[0], OMP_NUM_THREADS=str(threads),
               LIGHTGBM_PORTS=",".join(map(str, _free_ports(world))),
               LIGHTGBM_ADDRS=",".join(addresses),
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    worker = _LIGHTGBM_WORKER if library == "LightGBM" else _WORKER
    procs = [subprocess.Popen(prefixes[r] + [sys.executable, "-c", worker, folder, str(rounds),
                                             model_path, str(threads), "1" if quantized else "0"],
                              env=dict(env, RANK=str(r), GLOO_SOCKET_IFNAME=interfaces[r]),
                              stdout=subprocess.PIPE, text=True)
             for r in range(world)]
    outs = [json.loads(p.communicate(timeout=1800)[0].strip().splitlines()[-1])
            for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"gbdt_distributed: a worker failed: {[p.returncode for p in procs]}")
    return max(o["seconds"] for o in outs), outs[0]


def level_histograms(model_path):
    """Per tree level, the histograms built (the root, then one per split of the level above:
    its smaller child), averaged over the trees."""
    ensemble = json.load(open(model_path))["ensemble"]
    feature = np.asarray(ensemble["feature"])
    depth = int(np.log2(feature.shape[1] + 1)) - 1
    built = [1.0]
    for d in range(depth - 1):
        level = feature[:, 2 ** d - 1:2 ** (d + 1) - 1]
        built.append(float((level >= 0).sum(1).mean()))
    return built


def run(device, quick=True):
    if device != "cpu":
        return []
    from benchmarks.gbdt import make_data
    from sklearn.metrics import roc_auc_score
    from pynotes.gbdt import GBDTClassifier

    X_train, X_test, y_train, y_test = make_data("a")
    rounds, repeats = (20, 1) if quick else (100, 3)
    if quick:
        X_train, y_train = X_train[:100_000], y_train[:100_000]
    features = X_train.shape[1]
    label = f"{len(X_train) // 1000}k x {features}, depth 6, {rounds} rounds"
    # (library, processes, threads each, quantized gradients): the anchor first, then the run
    # compared with it
    ours = ("pynotes", 2, 1, False)
    configs = [(("pynotes", 1, 1, False), ours),
               (("pynotes", 1, 1, True), ("pynotes", 2, 1, True)),
               (("pynotes", 1, 2, False), ours)]
    try:
        import lightgbm  # noqa: F401
        configs += [(("LightGBM", 1, 1, False), ("LightGBM", 2, 1, False)),
                    (("LightGBM", 2, 1, False), ours)]
    except ImportError:
        print("gbdt_distributed: LightGBM is not installed: no LightGBM data-parallel anchor")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        np.save(os.path.join(folder, "X.npy"), X_train)
        np.save(os.path.join(folder, "y.npy"), y_train)
        runs = {}
        for _ in range(repeats):  # the configurations alternate within each repeat
            for config in dict.fromkeys(c for pair in configs for c in pair):
                path = os.path.join(folder, "model-%s-%d-%d-%d.json" % config)
                runs.setdefault(config, []).append((*_fit(*config, folder, rounds, path),
                                                    path))
        for anchor, run_ in configs:
            times = {c: [r[0] for r in runs[c]] for c in (anchor, run_)}
            note = f"runs {min(times[run_]):.1f}-{max(times[run_]):.1f} s vs " \
                f"{min(times[anchor]):.1f}-{max(times[anchor]):.1f} s"
            if run_[0] == "pynotes":
                _, out, path = runs[run_][-1]
                sent, combining = out["sent_bytes"], out["combining"]
                auc = {c: roc_auc_score(y_test, GBDTClassifier().load_model(runs[c][-1][2])
                                        .predict_proba(X_test)[:, 1])
                       for c in (anchor, run_) if c[0] == "pynotes"}
                per_level = level_histograms(path)
                cell_bytes = 8 if run_[3] else 16  # packed quantized, or fixed-point (G, H)
                level_mb = ", ".join(f"{n * features * 256 * cell_bytes / 1e6:.2f}"
                                     for n in per_level)
                note = (f"test AUC {' vs '.join(f'{v:.4f}' for v in auc.values())}; per tree "
                        f"{sent / rounds / 1e6:.2f} MB sent by rank 0 (histograms built by "
                        f"level, MB: {level_mb}), {combining / rounds * 1e3:.1f} ms in "
                        f"collectives on rank 0; {note}")
            name = lambda c: f"{c[0]} {c[1]} process{'es' if c[1] > 1 else ''} x {c[2]} " \
                f"thread{'s' if c[2] > 1 else ''}"  # noqa: E731
            variant = ("train, quantized gradients: " if run_[3] else "train: ") + name(run_)
            results.append(Result("gbdt_distributed", label, variant, name(anchor),
                                  statistics.median(times[anchor]) * 1e3,
                                  statistics.median(times[run_]) * 1e3, note=note))
    return results
