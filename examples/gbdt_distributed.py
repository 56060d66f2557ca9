"""Data-parallel gradient boosting with pynotes.gbdt on torch.distributed: every process loads
its own shard of a table (here rows of NumPy files it memory-maps), and all train one model of
all the rows; rank 0 prints the validation loss of every round and saves the model.

    torchrun --standalone --nproc_per_node=2 examples/gbdt_distributed.py
    torchrun --nnodes=4 --nproc_per_node=1 --rdzv-endpoint=HOST:29500 \
        examples/gbdt_distributed.py --data /shared/table   # on each machine

The first run writes a synthetic table (make_classification, fixed seed) to --data; put your
own X.npy, y.npy, X_val.npy, y_val.npy there instead. Use --device cuda with one GPU per
process (the NCCL backend).
"""
import argparse
import datetime
import os
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist

from pynotes.gbdt import GBDTClassifier


def write_table(folder, rows, features):
    from sklearn.datasets import make_classification
    X, y = make_classification(n_samples=rows + rows // 5, n_features=features,
                               n_informative=features // 2, random_state=0)
    X = X.astype(np.float32)
    os.makedirs(folder, exist_ok=True)
    for name, part in (("X", X[:rows]), ("y", y[:rows]), ("X_val", X[rows:]),
                       ("y_val", y[rows:])):
        np.save(os.path.join(folder, f"{name}.tmp.npy"), part)
        os.replace(os.path.join(folder, f"{name}.tmp.npy"), os.path.join(folder, f"{name}.npy"))


def my_rows(folder, name, rank, world):
    """This process's contiguous shard of a memory-mapped array: only its rows are read."""
    table = np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")
    begin, end = len(table) * rank // world, len(table) * (rank + 1) // world
    return np.ascontiguousarray(table[begin:end])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(),
                                                       "pynotes_gbdt_example"))
    parser.add_argument("--rows", type=int, default=200_000, help="of a synthetic table")
    parser.add_argument("--features", type=int, default=20, help="of a synthetic table")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--save", default=None, help="where rank 0 writes the model (JSON)")
    args = parser.parse_args()

    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # Collectives give up after the timeout: a process that dies stops the others.
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo",
                            timeout=datetime.timedelta(minutes=2))
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank == 0 and not os.path.exists(os.path.join(args.data, "y_val.npy")):
        write_table(args.data, args.rows, args.features)
    dist.barrier()

    X, y = my_rows(args.data, "X", rank, world), my_rows(args.data, "y", rank, world)
    X_val = my_rows(args.data, "X_val", rank, world)
    y_val = my_rows(args.data, "y_val", rank, world)
    model = GBDTClassifier(n_estimators=args.rounds, max_depth=args.depth, learning_rate=0.1,
                           device=args.device)
    start = time.perf_counter()
    model.fit(X, y, eval_set=[(X_val, y_val)])
    seconds = time.perf_counter() - start
    if rank == 0:
        for round_, loss in enumerate(model.evals_result_["validation_0"]["logloss"]):
            print(f"round {round_ + 1:4d}  validation logloss {loss:.5f}")
        trees = len(model._ensemble.feature)
        print(f"{world} processes, {len(X)} rows on rank 0: {seconds:.2f} s, "
              f"{model.reduced_bytes_ / trees / 1e6:.2f} MB sent per tree")
        if args.save:
            model.save_model(args.save)
            print(f"saved {args.save}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
