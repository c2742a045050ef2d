"""The same certify work on 1 rank x 1 thread and on 2 torchrun ranks x 1 thread: the tables must be equal; prints
the wall-time ratio (2 ranks / 1 rank) with start-up included and with it taken out.

    OMP_NUM_THREADS=1 python benchmarks/distributed_certify.py [--n-ex 64] [--N 20000]

Start-up (interpreter, torch import, process group, model load) is measured as the wall time of the same command
on 2 examples with N = 200 and subtracted from both runs for the second ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(cmd, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-ex", type=int, default=64)
    ap.add_argument("--N", type=int, default=20_000)
    ap.add_argument("--model", default="small_cnn")
    a = ap.parse_args()
    import pandas as pd

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)

        def args(n_ex, N, out):
            return ["-m", "robcli", "certify", "--model", a.model, "--dataset", "digits", "--n-ex", str(n_ex),
                    "--N0", "100", "--N", str(N), "--sigma", "0.25", "--device", "cpu", "--quiet", "--out", out]

        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        s1 = _run([sys.executable, *args(2, 200, "s1.parquet")], d)
        s2 = _run([*launch, *args(2, 200, "s2.parquet")], d)
        t1 = _run([sys.executable, *args(a.n_ex, a.N, "one.parquet")], d)
        t2 = _run([*launch, *args(a.n_ex, a.N, "two.parquet")], d)
        one = pd.read_parquet(d / "one.parquet").drop(columns="time")
        two = pd.read_parquet(d / "two.parquet").drop(columns="time")
        pd.testing.assert_frame_equal(one, two)
    print(f"certify {a.model} digits, {a.n_ex} images, N = {a.N}: tables equal ({len(one)} rows)")
    print(f"1 rank x 1 thread {t1:.1f} s, 2 ranks x 1 thread {t2:.1f} s: ratio {t2 / t1:.2f} (goal <= 0.6)")
    print(f"without start-up ({s1:.1f} s / {s2:.1f} s): ratio {(t2 - s2) / (t1 - s1):.2f}")


if __name__ == "__main__":
    main()
