"""One process of the distributed GBDT tests (test_gbdt_distributed.py starts them):
python gbdt_distributed_worker.py SCENARIO OUT_DIR, with RANK, WORLD_SIZE and MASTER_PORT set.
Writes what it saw to OUT_DIR/rank{RANK}.json."""
import datetime
import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gbdt_distributed_data import CONFIGS, shard  # noqa: E402

from pynotes import gbdt  # noqa: E402


def fit_configs(rank, world):
    out = {}
    for name, (make_model, make_data) in CONFIGS.items():
        data = make_data()
        if data is None:  # pandas missing
            continue
        X, y, w, X_val, y_val = (shard(part, rank, world) for part in data)
        model = make_model()
        kwargs = {"sample_weight": w} if w is not None else {}
        if X_val is not None:
            kwargs["eval_set"] = [(X_val, y_val)]
        model.fit(X, y, **kwargs)
        path = os.path.join(sys.argv[2], f"{name}.rank{rank}.json")
        model.save_model(path)
        rows = data[3] if data[3] is not None else data[0]  # the eval rows, else all
        predict = model.predict_proba if hasattr(model, "predict_proba") else model.predict
        out[name] = {"model": path, "predictions": predict(rows).tolist(),
                     "evals": getattr(model, "evals_result_", None),
                     "best_iteration": model.best_iteration_,
                     "n_processes": model.n_processes_,
                     "reduced_bytes": model.reduced_bytes_}
    return out


def errors(rank, world):
    """Each bad fit raises the same error on every process, which stay usable."""
    X, y = CONFIGS["binary"][1]()[:2]
    X, y = shard(X, rank, world), shard(y, rank, world)
    cases = {
        "features": lambda: gbdt.GBDTClassifier(n_estimators=2).fit(
            X[:, :-1] if rank == 1 else X, y),
        "parameters": lambda: gbdt.GBDTClassifier(
            n_estimators=2, max_depth=3 if rank == 1 else 4).fit(X, y),
        "no_rows": lambda: gbdt.GBDTClassifier(n_estimators=2).fit(
            X[:0] if rank == 1 else X, y[:0] if rank == 1 else y),
    }
    out = {}
    for name, call in cases.items():
        try:
            call()
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    dist.barrier()
    out["after"] = gbdt.GBDTClassifier(n_estimators=2).fit(X, y).n_processes_
    return out


def failure(rank, world):
    """Rank 1 dies in the third round; the others must stop with a CollectiveError."""
    X, y = CONFIGS["binary"][1]()[:2]
    X, y = shard(X, rank, world), shard(y, rank, world)
    gradients = gbdt._Objective.gradients
    calls = []

    def dying(self, *args):
        calls.append(1)
        if rank == 1 and len(calls) == 3:
            os._exit(3)
        return gradients(self, *args)
    gbdt._Objective.gradients = dying
    start = time.monotonic()
    try:
        gbdt.GBDTClassifier(n_estimators=20, max_depth=4).fit(X, y)
        return {"error": None}
    except RuntimeError as e:
        return {"error": type(e).__name__, "message": str(e),
                "seconds": time.monotonic() - start}


def main():
    scenario, out_dir = sys.argv[1], sys.argv[2]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['MASTER_PORT']}",
                            rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    result = {"fit": fit_configs, "errors": errors, "failure": failure}[scenario](rank, world)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    if scenario != "failure":
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # a failure scenario's group cannot be torn down cleanly


if __name__ == "__main__":
    main()
