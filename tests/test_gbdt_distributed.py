"""Data-parallel GBDT on torch.distributed (gloo over 127.0.0.1): 2 and 3 processes train the
model a single process trains on all their rows, every process the same bits; bad fits raise
the same error everywhere; a process that dies stops the others with a clear error."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)
from sklearn.metrics import roc_auc_score  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gbdt_distributed_data import CONFIGS, EXACT  # noqa: E402

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gbdt_distributed_worker.py")
TIMEOUT_S = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(scenario, world, tmp_path):
    """Starts `world` workers of a scenario; returns their exit codes and results by rank."""
    env = dict(os.environ, WORLD_SIZE=str(world), MASTER_PORT=str(free_port()),
               GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(WORKER)),
                                           os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, WORKER, scenario, str(tmp_path)],
                              env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    codes, logs = [], []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
            codes.append(p.returncode)
    finally:
        for p in procs:
            p.kill()
    results = {}
    for r in range(world):
        path = tmp_path / f"rank{r}.json"
        if path.exists():
            results[r] = json.loads(path.read_text())
    return codes, results, logs


def trees(path):
    return json.loads(open(path).read())["ensemble"]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_distributed_equals_single_process(world, tmp_path):
    codes, results, logs = run_processes("fit", world, tmp_path)
    assert codes == [0] * world, "\n".join(logs)
    for name, (make_model, make_data) in CONFIGS.items():
        data = make_data()
        if data is None:
            continue
        got = results[0][name]
        assert got["n_processes"] == world and got["reduced_bytes"] > 0
        # every process has the same model, bit for bit, and predicts alike
        first = open(got["model"]).read()
        for r in range(1, world):
            assert open(results[r][name]["model"]).read() == first, (name, r)
            np.testing.assert_array_equal(results[r][name]["predictions"], got["predictions"])
        X, y, w, X_val, y_val = data
        single = make_model()
        kwargs = {"sample_weight": w} if w is not None else {}
        if X_val is not None:
            kwargs["eval_set"] = [(X_val, y_val)]
        single.fit(X, y, **kwargs)
        rows = X_val if X_val is not None else X
        predict = single.predict_proba if hasattr(single, "predict_proba") else single.predict
        expected = predict(rows)
        if name in EXACT:  # the same trees: splits equal, values to rounding
            ours = trees(got["model"])
            path = tmp_path / f"{name}.single.json"
            single.save_model(path)
            theirs = trees(path)
            for key in ("feature", "threshold", "default_left", "group", "cat_left"):
                assert ours.get(key) == theirs.get(key), (name, key)
            np.testing.assert_allclose(ours["value"], theirs["value"], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(got["predictions"], expected, rtol=1e-5, atol=1e-7)
            assert got["best_iteration"] == single.best_iteration_, name
            if X_val is not None:
                for key, values in single.evals_result_["validation_0"].items():
                    np.testing.assert_allclose(got["evals"]["validation_0"][key], values,
                                               rtol=1e-9)
        elif name == "sampled_cuts":  # cut points of a sample: the same accuracy
            auc = roc_auc_score(y_val, np.asarray(got["predictions"])[:, 1])
            assert abs(auc - roc_auc_score(y_val, expected[:, 1])) < 0.001


def test_bad_fits_raise_on_every_process(tmp_path):
    codes, results, logs = run_processes("errors", 2, tmp_path)
    assert codes == [0, 0], "\n".join(logs)
    for r in (0, 1):
        got = results[r]
        assert "rank 1 differs from rank 0 in its number of features: 7 vs 8" in got["features"]
        assert "rank 1 differs from rank 0 in its parameters" in got["parameters"]
        assert "ranks [1] have no rows" in got["no_rows"]
        assert got["after"] == 2  # the group still works


def test_a_dying_process_stops_the_others(tmp_path):
    codes, results, logs = run_processes("failure", 2, tmp_path)
    assert codes == [0, 3], "\n".join(logs)
    got = results[0]
    assert got["error"] == "CollectiveError", got
    assert "rank 0 of 2" in got["message"] and "another process stopped" in got["message"]
    assert got["seconds"] < 60


class ThreadCollective:
    """The collective of ops.grow_tree between threads of this process, one per shard."""

    def __init__(self, shards):
        import threading
        self.barrier = threading.Barrier(shards)
        self.parts = [None] * shards
        self.calls = [0] * shards

    def for_shard(self, i):
        from pynotes.ops import gbdt as ops

        def collective(op, buffer):
            if op == ops.REDUCE_SCATTER_START:
                return  # all of it at REDUCE_SCATTER
            self.calls[i] += 1
            self.parts[i] = buffer.clone()
            self.barrier.wait()
            parts = list(self.parts)
            shards = len(parts)
            if op == ops.ALL_GATHER:  # chunk r from shard r
                total = torch.cat([p.view(shards, -1)[r] for r, p in enumerate(parts)])
            else:
                total = parts[0].clone()
                for part in parts[1:]:
                    total = torch.maximum(total, part) if op == ops.REDUCE_MAX else total + part
            self.barrier.wait()
            if op == ops.REDUCE_SCATTER:  # only this shard's chunk
                buffer.view(shards, -1)[i].copy_(total.view(shards, -1)[i])
            else:
                buffer.copy_(total)
        return collective


@pytest.mark.parametrize("path,quantize_bins,shards,features", [
    ("extension", 0, 2, 5), ("extension", 8, 2, 5), ("extension", 0, 3, 5),
    ("extension", 8, 4, 3),  # a shard owning no feature
    ("level loop", 0, 2, 5)])
def test_sharded_tree_equals_the_whole(path, quantize_bins, shards, features):
    """Two shards growing one tree through a collective (threads here, processes in a fit)
    grow the tree of all rows: the C++ grower (each shard searching its half of the features)
    and the Python level loop (CUDA's)."""
    import threading

    from pynotes import _ext
    from pynotes.ops import gbdt as ops
    if path == "extension" and not _ext.extension_loaded():
        pytest.skip("extension not built")
    generator = torch.Generator().manual_seed(5)
    rows, num_bins = 6000, 32
    bins = torch.randint(0, num_bins, (rows, features), generator=generator, dtype=torch.uint8)
    grad = torch.randint(-8, 9, (rows,), generator=generator).float() / 4 \
        + 2 * (bins[:, 0] < 9).float()
    hess = torch.randint(1, 5, (rows,), generator=generator).float() / 2
    categorical = torch.tensor([False, True, False, False, True])[:features] \
        if path == "extension" else None
    args = (5, num_bins, 1.0, 0.0, 1.0)
    kwargs = dict(quantize_bins=quantize_bins, seed=7, categorical=categorical)
    fallback = _ext.force_fallback(path == "level loop")
    with fallback:
        whole = ops.grow_tree(bins, grad, hess, *args, **kwargs)
        cuts = [0, 2500, 4000, 5100, rows][:shards] + [rows]
        parts = [slice(cuts[i], cuts[i + 1]) for i in range(shards)]
        collective = ThreadCollective(shards)
        got = [None] * shards

        def grow(i):
            s = parts[i]
            got[i] = ops.grow_tree(bins[s], grad[s], hess[s], *args, **kwargs,
                                   collective=collective.for_shard(i), processes=shards, rank=i,
                                   row_offset=s.start)
        threads = [threading.Thread(target=grow, args=(i,)) for i in range(shards)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert all(g is not None for g in got) and collective.calls[0] > 3
    for i, name in enumerate("feature split_bin default_left gain sums".split()):
        for other in got[1:]:
            assert torch.equal(got[0][i], other[i]), name  # every shard: one tree
        if name in ("gain", "sums"):
            torch.testing.assert_close(got[0][i], whole[i], rtol=1e-12, atol=1e-9)
        else:
            assert torch.equal(got[0][i], whole[i]), name
    assert torch.equal(torch.cat([g[5] for g in got]), whole[5])  # each row's leaf
    for other in got:
        assert torch.equal(other[6], whole[6])
    assert (whole[0] >= 0).sum() > 3


def test_example_runs_with_torchrun(tmp_path):
    """examples/gbdt_distributed.py under torchrun: each process reads its shard, rank 0
    alone prints the rounds and saves the model."""
    root = os.path.dirname(os.path.dirname(WORKER))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", os.path.join(root, "examples", "gbdt_distributed.py"),
               "--rows", "6000", "--features", "8", "--rounds", "4", "--depth", "3",
               "--data", str(tmp_path / "table"), "--save", str(tmp_path / "model.json")]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stdout + out.stderr
    rounds = [line for line in out.stdout.splitlines() if line.startswith("round")]
    assert len(rounds) == 4 and "2 processes, 3000 rows on rank 0" in out.stdout
    from pynotes.gbdt import GBDTClassifier
    model = GBDTClassifier().load_model(tmp_path / "model.json")
    assert model.n_features_in_ == 8 and model.predict(np.zeros((2, 8))).shape == (2,)
