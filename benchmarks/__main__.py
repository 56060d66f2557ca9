"""pynotes benchmark suite.

    python -m benchmarks                 # quick CPU run (what `make bench` runs)
    python -m benchmarks --full          # more shapes
    python -m benchmarks --device cuda   # on a GPU
    python -m benchmarks --ops group_norm

Prints one table (speedup = anchor time / pynotes time) and writes it, with the machine's
description, to benchmarks/results/<device>-<quick|full>.{json,md,png}.
"""
import argparse
import importlib
import os

import torch

from benchmarks.common import (copy_bandwidth_gbps, describe_machine, format_table,
                               machine_info, write_reports)

OPS = ["group_norm", "lstm", "gcn", "gbdt", "iwae"]  # one module per op family


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", default=True,
                      help="the default: a few shapes, under 3 minutes on 2 cores")
    size.add_argument("--full", dest="quick", action="store_false", help="more shapes")
    parser.add_argument("--ops", default=",".join(OPS),
                        help=f"comma-separated op families (default: all: {','.join(OPS)})")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                        help="directory for the JSON / Markdown / PNG reports")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        parser.error(f"unknown op families {unknown}; choose from {OPS}")

    torch.manual_seed(0)
    machine = machine_info(args.device)
    copy_gbps = copy_bandwidth_gbps(args.device)
    print(describe_machine(machine, copy_gbps), flush=True)
    results = []
    for op in ops:
        module = importlib.import_module(f"benchmarks.{op}")
        results += module.run(args.device, quick=args.quick)
    print(format_table(results, copy_gbps))
    name = f"{args.device}-{'quick' if args.quick else 'full'}"
    for path in write_reports(results, machine, copy_gbps, args.out, name):
        print("wrote", os.path.relpath(path))


if __name__ == "__main__":
    main()
