"""Data-parallel gradient boosting (pynotes.gbdt on torch.distributed, gloo over 127.0.0.1):
2 processes with one thread each, each holding half the rows, against one process with one
thread (with float and with quantized gradients) and with 2 threads, on case (a) of
benchmarks/gbdt.py (500k x 50: 400k training rows, depth 6, 100 rounds; the quick run: 100k
rows, 20 rounds). Each configuration runs in fresh processes, the runs
alternate, and a run's time is the slowest process's fit (after a barrier); the median of the
runs is reported. Also what the processes combine per tree (the bytes of the histograms and
row counts the all-reduces sum; a ring all-reduce sends 2 (W - 1) / W of them per process)
and per tree level: the numbers of the README's cost model. CPU only.
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
combining = [0.0]  # seconds in the trees' collectives (waiting for the others included)
collective = _gbdt_distributed.Collective.collective


def timed(self, op, buffer):
    start = time.perf_counter()
    collective(self, op, buffer)
    combining[0] += time.perf_counter() - start


_gbdt_distributed.Collective.collective = timed
X, y = (np.load(os.path.join(folder, n + ".npy"), mmap_mode="r") for n in ("X", "y"))
begin, end = len(X) * rank // world, len(X) * (rank + 1) // world
X, y = np.ascontiguousarray(X[begin:end]), np.ascontiguousarray(y[begin:end])
if world > 1:
    import datetime
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + os.environ["MASTER_PORT"],
                            rank=rank, world_size=world, timeout=datetime.timedelta(minutes=5))
    dist.barrier()
model = GBDTClassifier(n_estimators=rounds, max_depth=6, learning_rate=0.1, n_jobs=threads,
                       use_quantized_grad=quantized)
start = time.perf_counter()
model.fit(X, y)
seconds = time.perf_counter() - start
if rank == 0:
    model.save_model(model_path)
print(json.dumps({"seconds": seconds, "reduced_bytes": model.reduced_bytes_,
                  "combining": combining[0]}))
if world > 1:
    dist.destroy_process_group()
"""


def cases(device, quick=True):
    if device != "cpu":
        return []
    rows = "100k rows, 20 rounds" if quick else "400k x 50, depth 6, 100 rounds"
    return [f"gbdt_distributed {rows}: 2 processes x 1 thread vs 1 process x 1 thread "
            "(float and quantized gradients) and x 2 threads"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit(world, threads, quantized, folder, rounds, model_path):
    """One run: (seconds of the slowest process, bytes combined, seconds in collectives) of
    rank 0."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, WORLD_SIZE=str(world), MASTER_PORT=str(_free_port()),
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, folder, str(rounds), model_path,
                               str(threads), "1" if quantized else "0"],
                              env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, text=True)
             for r in range(world)]
    outs = [json.loads(p.communicate(timeout=1800)[0].strip().splitlines()[-1])
            for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"gbdt_distributed: a worker failed: {[p.returncode for p in procs]}")
    return max(o["seconds"] for o in outs), outs[0]["reduced_bytes"], outs[0]["combining"]


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
    # (processes, threads each, quantized gradients): the anchor first, then pynotes on 2
    configs = [((1, 1, False), (2, 1, False)), ((1, 1, True), (2, 1, True)),
               ((1, 2, False), (2, 1, False))]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        np.save(os.path.join(folder, "X.npy"), X_train)
        np.save(os.path.join(folder, "y.npy"), y_train)
        runs = {}
        for _ in range(repeats):  # the configurations alternate within each repeat
            for config in dict.fromkeys(c for pair in configs for c in pair):
                path = os.path.join(folder, "model-%d-%d-%d.json" % config)
                runs.setdefault(config, []).append((*_fit(*config, folder, rounds, path),
                                                    path))
        for anchor, ours in configs:
            times = {c: [r[0] for r in runs[c]] for c in (anchor, ours)}
            _, reduced, combining, path = runs[ours][-1]
            auc = {c: roc_auc_score(y_test, GBDTClassifier().load_model(runs[c][-1][3])
                                    .predict_proba(X_test)[:, 1]) for c in (anchor, ours)}
            per_level = level_histograms(path)
            cell_bytes = 8 if ours[2] else 16  # packed quantized, or fixed-point (G, H)
            level_mb = ", ".join(f"{n * features * 256 * cell_bytes / 1e6:.2f}"
                                 for n in per_level)
            note = (f"test AUC {auc[anchor]:.4f} vs {auc[ours]:.4f}; per tree "
                    f"{reduced / rounds / 1e6:.2f} MB combined (histograms by level, MB: "
                    f"{level_mb}), {combining / rounds * 1e3:.1f} ms in collectives on rank 0; "
                    f"runs {min(times[ours]):.1f}-{max(times[ours]):.1f} s vs "
                    f"{min(times[anchor]):.1f}-{max(times[anchor]):.1f} s")
            name = lambda c: f"{c[0]} process{'es' if c[0] > 1 else ''} x {c[1]} " \
                f"thread{'s' if c[1] > 1 else ''}"  # noqa: E731
            variant = "train, quantized gradients" if ours[2] else "train"
            results.append(Result("gbdt_distributed", label, f"{variant}: {name(ours)}",
                                  name(anchor), statistics.median(times[anchor]) * 1e3,
                                  statistics.median(times[ours]) * 1e3, note=note))
    return results
