"""A cost model of data-parallel pynotes.gbdt (docs/performance.md's table): per tree level, the
histograms every worker builds, the reduce-scatter that sums them by feature block and the
exchange of the best splits, for W workers on a network of a given bandwidth and latency.

    python -m benchmarks.gbdt_cost_model [--ns-per-row-feature 1.5] [--latency-us 50]

Per level d of a depth-D tree (every node splitting): the histograms built are 1 at the root
and one per split above (2^(d-1)), each features x 256 bins x 16 bytes (fixed-point G, H);
a worker's histogram pass reads its N / W rows at the root and about half of them below
(the smaller children). Compute per level = rows read x features x c / threads, with c the
cost per row and feature measured on this machine (benchmarks/gbdt_distributed.py, one process,
one thread: its time per tree over N x F x (1 + (D - 1) / 2)). Communication per level, as
the CPU grower does it (csrc/gbdt/tree_grower_cpu_kernel.cpp, FeatureSharded): one
reduce-scatter of the histograms built, each worker sending (W - 1) / W of them, and one
all-gather of every worker's best split per node (96 bytes each), each in log2 W latency steps
for a power-of-two W (recursive halving and doubling, pynotes/gbdt/distributed.py), else W - 1
(a ring); per tree one all-reduce of the gradients' sizes (2 log2 W steps). The grower does not
overlap communication with compute, so a tree costs their sum; the level where communication
starts to dominate is the first whose collectives take longer than its histogram pass.
benchmarks/gbdt_network.py checks the model against runs over emulated links.
"""
import argparse
import math

BIN_BYTES = 16  # fixed-point (G, H), int64 each
BINS = 256
SPLIT_BYTES = 96  # a split as the workers exchange it (12 int64 words)


def communication(built, nodes, features, workers, gbps, latency_us, bin_bytes=BIN_BYTES,
                  overlap_s=0.0):
    """Seconds and bytes a worker sends for one level: `built` histograms reduce-scattered (with
    each node's totals and rows), then `nodes` best splits all-gathered. overlap_s: the
    compute the reduce-scatter's first step overlaps (the build of the worker's own features),
    which hides as much of that step's transfer."""
    if workers == 1:
        return 0.0, 0.0
    share = (workers - 1) / workers
    # every chunk carries each node's totals and rows
    histograms = share * built * (features * BINS * bin_bytes + workers * (bin_bytes + 8))
    splits = share * workers * nodes * SPLIT_BYTES
    bytes_per_s = gbps * 1e9 / 8
    buffer = histograms * workers / (workers - 1)
    # recursive halving sends half the buffer first, a ring one chunk
    first_step = (buffer / 2 if workers & (workers - 1) == 0 else buffer / workers) / bytes_per_s
    hidden = min(overlap_s, first_step)
    steps = 2 * (math.ceil(math.log2(workers)) if workers & (workers - 1) == 0 else workers - 1)
    return (histograms + splits) / bytes_per_s - hidden + steps * latency_us * 1e-6, \
        histograms + splits


def tree_overhead(workers, latency_us):
    """The per-tree all-reduce of the gradients' sizes (32 bytes): latency only."""
    return 0.0 if workers == 1 else 2 * math.ceil(math.log2(workers)) * latency_us * 1e-6


def levels(rows, features, depth, workers, threads, ns_per_row_feature, gbps, latency_us):
    """Per level: (compute s, communication s, bytes sent by a worker)."""
    out = []
    for d in range(depth):
        built = 1 if d == 0 else 2 ** (d - 1)
        rows_read = rows / workers * (1.0 if d == 0 else 0.5)
        compute = rows_read * features * ns_per_row_feature * 1e-9 / threads
        comm, sent = communication(built, 2 ** d, features, workers, gbps, latency_us)
        out.append((compute, comm, sent))
    return out


def table(rows, features, depth, threads, ns_per_row_feature, latency_us, workers_list,
          networks):
    lines = ["| workers | network | compute s / tree | communication s / tree | MB sent / tree "
             "| speedup over 1 | communication dominates from level |",
             "|---:|---|---:|---:|---:|---:|---|"]
    single = sum(c for c, _, _ in levels(rows, features, depth, 1, threads,
                                         ns_per_row_feature, 1, latency_us))
    for workers in workers_list:
        for gbps in networks:
            per_level = levels(rows, features, depth, workers, threads, ns_per_row_feature,
                               gbps, latency_us)
            compute = sum(c for c, _, _ in per_level)
            comm = sum(m for _, m, _ in per_level) + tree_overhead(workers, latency_us)
            mb = sum(b for _, _, b in per_level) / 1e6
            dominated = next((str(d) for d, (c, m, _) in enumerate(per_level) if m > c),
                             f"none (of 0-{depth - 1})")
            lines.append(f"| {workers} | {gbps:g} Gb/s | {compute:.2f} | {comm:.3f} | {mb:.1f} "
                         f"| {single / (compute + comm):.1f}x | {dominated} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=float, default=1.7e9, help="Criteo, as LightGBM's test")
    parser.add_argument("--features", type=int, default=67)
    parser.add_argument("--depth", type=int, default=8, help="255 leaves, as LightGBM's test")
    parser.add_argument("--threads", type=int, default=16, help="per worker")
    parser.add_argument("--ns-per-row-feature", type=float, default=1.5,
                        help="measured here (benchmarks/gbdt_distributed.py, 1 x 1 thread)")
    parser.add_argument("--latency-us", type=float, default=50.0, help="per collective step")
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 16, 64, 256])
    parser.add_argument("--gbps", type=float, nargs="+", default=[10, 54, 100])
    args = parser.parse_args()
    print(table(args.rows, args.features, args.depth, args.threads, args.ns_per_row_feature,
                args.latency_us, args.workers, args.gbps))


if __name__ == "__main__":
    main()
