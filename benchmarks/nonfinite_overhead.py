"""What refusing non-finite logits costs: attack and certify with the checks on vs off, in one run.

The checks (robcli/models/finite.py): one clean forward pass per example before anything is attacked or
certified, and a device-side flag (``isfinite().all()`` OR-ed into a 0-dim tensor) on every forward pass,
read once per (batch, eps) block of an attack and once per group of certified examples. "Off" replaces both
with no-ops. The two are run alternately ``--repeats`` times and the best time of each is compared (shared
machine). Prints on/off ratios (goal: <= 1.05).

    python benchmarks/nonfinite_overhead.py [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch


@contextlib.contextmanager
def checks_off():
    import robcli.models.finite as fin

    see, clean = fin.FiniteWatch.see, fin.check_clean_logits
    fin.FiniteWatch.see = lambda self, t: t
    fin.check_clean_logits = lambda *a, **k: None
    try:
        yield
    finally:
        fin.FiniteWatch.see, fin.check_clean_logits = see, clean


def best(fn, repeats: int, sync) -> tuple[float, float]:
    on = off = float("inf")
    for _ in range(repeats):
        for mode in ("on", "off"):
            ctx = checks_off() if mode == "off" else contextlib.nullcontext()
            with ctx:
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                dt = time.perf_counter() - t0
            on, off = (min(on, dt), off) if mode == "on" else (on, min(off, dt))
    return on, off


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    from robcli.attacks.engine import AttackConfig, run_attack
    from robcli.certify.smoothing import CertifyConfig, run_certify
    from robcli.data.registry import load_split
    from robcli.models import load_model

    dev = torch.device(a.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    cases = []
    digits = load_split("digits", "test").select(n_ex=256)
    cnn = load_model("small_cnn", dataset_info=digits.info, seed=0).model
    gauss = load_split("gaussians", "test").select(n_ex=256)
    mlp = load_model("mlp", dataset_info=gauss.info, seed=0).model
    for name, model, data in (("digits small_cnn", cnn, digits), ("gaussians mlp", mlp, gauss)):
        cfg = AttackConfig(attack="apgd-conf", eps=("0.05", "0.1"), steps=50, batch=128)
        cases.append((f"attack apgd-conf 50 steps x 2 eps, 256 {name}",
                      lambda m=model, d=data, c=cfg: run_attack(m, d, c, device=dev)))
        ccfg = CertifyConfig(sigmas=(0.12,), N0=100, N=10_000, alpha=0.001, batch=1000)
        cases.append((f"certify N=10,000, 4 {name}",
                      lambda m=model, d=data.select(n_ex=4), c=ccfg: run_certify(m, d, c, device=dev)))
    for what, fn in cases:
        fn()  # warm-up
        on, off = best(fn, a.repeats, sync)
        print(f"{what}: checks on {on:.3f} s, off {off:.3f} s, ratio {on / off:.3f}")


if __name__ == "__main__":
    main()
