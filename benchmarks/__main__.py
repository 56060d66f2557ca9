"""pynotes benchmark suite.

    python -m benchmarks                 # quick CPU run (what `make bench` runs)
    python -m benchmarks --full          # more shapes
    python -m benchmarks --device cuda   # on a GPU
    python -m benchmarks --ops group_norm
    python -m benchmarks --device cuda --list   # the cases a run would time; runs nothing

Prints one table (speedup = anchor time / pynotes time) and writes it, with the machine's
description, to benchmarks/results/<device>-<quick|full>.{json,md,png} (--out, --name), after
each op family, so a run stopped part-way keeps what it measured.
"""
import argparse
import importlib
import os

import torch

from benchmarks.common import (copy_bandwidth_gbps, describe_machine, format_table,
                               machine_info, write_reports)

OPS = ["group_norm", "lstm", "gcn", "gbdt", "gbdt_distributed", "iwae", "memory"]  # a module per op family


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
    parser.add_argument("--name", help="base name of the reports (default: <device>-<quick|full>)")
    parser.add_argument("--list", action="store_true",
                        help="write the cases a run would time, without running them (no GPU "
                             "needed for --device cuda)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available() and not args.list:
        parser.error("--device cuda: no CUDA device is available")
    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        parser.error(f"unknown op families {unknown}; choose from {OPS}")

    torch.manual_seed(0)
    name = args.name or f"{args.device}-{'quick' if args.quick else 'full'}"
    machine = machine_info(args.device)
    modules = [importlib.import_module(f"benchmarks.{op}") for op in ops]
    if args.list:
        cases = [case for module in modules for case in module.cases(args.device, args.quick)]
        print("\n".join(cases))
        for path in write_reports([], machine, None, args.out, name, cases=cases):
            print("wrote", os.path.relpath(path))
        return
    copy_gbps = copy_bandwidth_gbps(args.device)
    print(describe_machine(machine, copy_gbps), flush=True)
    results = []
    for module in modules:
        results += module.run(args.device, quick=args.quick)
        paths = write_reports(results, machine, copy_gbps, args.out, name)
    print(format_table(results, copy_gbps))
    for path in paths:
        print("wrote", os.path.relpath(path))


if __name__ == "__main__":
    main()
