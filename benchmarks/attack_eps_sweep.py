"""An eps sweep of 4 radii in one `robcli attack` command against 4 separate commands (one radius each).

Measured twice: end to end (``python -m robcli.cli.main attack ...`` subprocesses, so each separate
command pays interpreter start, torch import, data and model loading, as a user's four runs would) and
in-process (``run_attack`` only: the saving from monotonicity alone, which depends on how many examples are
already broken at the smaller radii; with 4 radii it cannot go below ~0.25 and is ~0.7-0.8 here).

Model: small_cnn trained on digits for 2 epochs with plain SGD inside this script; APGD-CE, 40 steps, digits
test split, Linf eps in {0.02, 0.05, 0.1, 0.2}. The single call attacks at a larger radius only the examples
still robust at the smaller ones (monotonicity). Prints the time ratio one-call / four-calls (goal <= 0.5) and
checks that both give the same robustness verdict at every radius except where the separate run, attacking
an example again from scratch, happened to miss what the smaller radius found.

Run: OMP_NUM_THREADS=1 python benchmarks/attack_eps_sweep.py
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
from _attack_common import trained_digits_cnn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eps", type=float, nargs=4, default=[0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()

    from robcli.attacks.engine import AttackConfig, run_attack, summarize
    from robcli.data.registry import load_split

    data = load_split("digits", "test")
    model = trained_digits_cnn()

    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from robcli.models import make_card, save_run

    info = data.info
    with tempfile.TemporaryDirectory() as tmp:
        run = save_run(Path(tmp) / "run", model, make_card("small_cnn", info.num_classes, info.input_shape,
                                                           dataset="digits", mean=info.mean, std=info.std))

        def cmd(eps_list, out):
            args = [sys.executable, "-m", "robcli.cli.main", "attack", "--model", str(run), "--dataset", "digits",
                    "--attack", "apgd-ce", "--steps", str(a.steps), "--out", str(Path(tmp) / out), "--quiet"]
            for e in eps_list:
                args += ["--eps", str(e)]
            subprocess.run(args, check=True)

        t0 = time.perf_counter()
        cmd(a.eps, "sweep.parquet")
        c_one = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i, e in enumerate(a.eps):
            cmd([e], f"one{i}.parquet")
        c_four = time.perf_counter() - t0
    print(f"end to end (CLI): one command {c_one:.2f}s  four commands {c_four:.2f}s  ratio {c_one / c_four:.3f} "
          "(goal <= 0.5)")

    t0 = time.perf_counter()
    sweep = run_attack(model, data, AttackConfig(attack="apgd-ce", eps=tuple(a.eps), steps=a.steps), device="cpu")
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    parts = [run_attack(model, data, AttackConfig(attack="apgd-ce", eps=(e,), steps=a.steps), device="cpu")
             for e in a.eps]
    t_four = time.perf_counter() - t0
    sep = pd.concat(parts).sort_values(["idx", "eps"]).reset_index(drop=True)
    print(summarize(sweep)[["eps", "nat_acc", "robust_acc", "robust_inacc"]].to_string(index=False))
    weaker = int((sweep["robust"].to_numpy() & ~sep["robust"].to_numpy()).sum())
    print(f"rows where the sweep says robust but a separate run found a point: {weaker}")
    print(f"in-process (run_attack): one call {t_one:.2f}s  four calls {t_four:.2f}s  ratio {t_one / t_four:.3f}")


if __name__ == "__main__":
    main()
