"""Evaluation costs: chunked precision/recall at scale, encoder training, and a full `evaluate` run.

    .venv/bin/python benchmarks/bench_evaluate.py --pr-n 10000 40000
    .venv/bin/python benchmarks/bench_evaluate.py --shards shards --epochs 20 --peer-n 200

Prints one line per measurement; figures go to docs/benchmarks.md (## evaluate).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np


def bench_pr(n: int, dim: int = 128) -> None:
    """Precision/recall of two n-point sets: wall time and peak RSS (the full n × n matrix is never built)."""
    from synthgen.evaluate.metrics import precision_recall

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, dim), np.float32), rng.standard_normal((n, dim), np.float32) + 0.1
    t0 = time.perf_counter()
    pr = precision_recall(a, b)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"precision_recall n={n} d={dim}: {time.perf_counter() - t0:.1f} s, peak RSS {rss:.0f} MB, {pr}")


def bench_encoder_and_evaluate(shards: str, epochs: int, peer_n: int) -> None:
    """Train the encoder on the shards, then evaluate an ECGSYN-like peer at real test-split HRs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthgen.evaluate.encoder import train_encoder
    from synthgen.evaluate.peers import simulate_like
    from synthgen.evaluate.run import evaluate
    from synthgen.io.shards import read_shards

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train_encoder(shards, f"{tmp}/enc", epochs=epochs)
        print(f"train_encoder epochs={epochs}: {time.perf_counter() - t0:.0f} s")
        test = read_shards(shards, "test", ["ecg_id", "reports", "hr"]).slice(0, peer_n)
        conditions = test.append_column("label", pa.nulls(test.num_rows, pa.string()))
        os.makedirs(f"{tmp}/cond/shards")
        # a stand-in "generated" set: the test split's conditions with simulated signals
        zeros = np.zeros((test.num_rows, 12 * 1024), np.float32)
        signal = pa.FixedSizeListArray.from_arrays(
            pa.FixedSizeListArray.from_arrays(pa.array(zeros.reshape(-1)), 1024), 12)
        pq.write_table(conditions.append_column("signal", signal), f"{tmp}/cond/shards/part-00000.parquet")
        simulate_like(f"{tmp}/cond", f"{tmp}/peer")
        t0 = time.perf_counter()
        evaluate(shards, f"{tmp}/peer", f"{tmp}/eval", encoder=f"{tmp}/enc")
        print(f"evaluate ({peer_n} peer ECGs): {time.perf_counter() - t0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pr-n", type=int, nargs="*", default=[])
    ap.add_argument("--shards")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--peer-n", type=int, default=200)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}")
    for n in args.pr_n:
        bench_pr(n)
    if args.shards:
        bench_encoder_and_evaluate(args.shards, args.epochs, args.peer_n)


if __name__ == "__main__":
    main()
