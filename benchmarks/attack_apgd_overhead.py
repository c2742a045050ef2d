"""robcli's APGD-CE (40 steps) against a direct pyautoattack APGDAttack call on the same model and inputs.

Model: small_cnn trained on digits for 2 epochs with plain SGD inside this script. Inputs: the digits test
split. Both attack every example away from the model's own clean prediction, in batches of 256, at Linf
eps = 0.1. robcli additionally evaluates the clean inputs, re-evaluates and verifies every returned point and
builds the table. Prints both robust accuracies and the time ratio robcli / direct (goal <= 1.1); each side is
timed ``--repeats`` times alternately and the minimum is kept (the machine is shared).

Run: OMP_NUM_THREADS=1 python benchmarks/attack_apgd_overhead.py
"""

from __future__ import annotations

import argparse
import time

import torch
from _attack_common import trained_digits_cnn


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    from pyautoattack.autopgd_base import APGDAttack

    from robcli.attacks.engine import AttackConfig, run_attack, summarize
    from robcli.data.registry import load_split

    data = load_split("digits", "test")
    model = trained_digits_cnn()
    x, y = data.tensors()
    with torch.no_grad():
        pred = model(x).argmax(1)
    cfg = AttackConfig(attack="apgd-ce", eps=(a.eps,), steps=a.steps, batch=a.batch, seed=0)

    def ours():
        return run_attack(model, data, cfg, device="cpu")

    def direct():
        out = []
        for s in range(0, len(y), a.batch):
            atk = APGDAttack(model, n_iter=a.steps, norm="Linf", eps=a.eps, seed=0, loss="ce", device="cpu")
            out.append(atk.perturb(x[s:s + a.batch], pred[s:s + a.batch]))
        with torch.no_grad():
            return model(torch.cat(out)).argmax(1)

    t_ours, t_direct = [], []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        df = ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        adv_pred = direct()
        t_direct.append(time.perf_counter() - t0)
    s = summarize(df).iloc[0]
    rob_direct = float(((pred == y) & (adv_pred == pred)).float().mean())
    print(f"digits test n={len(y)}  nat acc {s['nat_acc']:.3f}  eps={a.eps}  steps={a.steps}")
    print(f"robust acc: robcli {s['robust_acc']:.3f}   direct pyautoattack {rob_direct:.3f}")
    print(f"time: robcli {min(t_ours):.2f}s  direct {min(t_direct):.2f}s  ratio {min(t_ours) / min(t_direct):.3f} (goal <= 1.1)")


if __name__ == "__main__":
    main()
