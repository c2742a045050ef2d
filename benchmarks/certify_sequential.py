"""Sequential certification vs fixed-N CERTIFY: samples per example, wall time, certified accuracy.

One run, one model: a digits ``small_cnn`` trained here with Gaussian noise at sigma (robcli's ``noise``
loss, a few epochs), certified on the first ``--n-images`` test images with

* fixed-N CERTIFY (Cohen et al.: N0 selection + N estimation samples per example, alpha),
* sequential ``--radius 0.25 --radius 0.5`` (``--against prediction``: N0 selection samples, then the
  anytime-valid test; the same alpha, and N as the cap),
* the same with ``--against label`` (no selection samples; certified accuracy of the labels),
* the adaptive sequential mode (no target radii; stops when more samples cannot raise the radius by more
  than 0.02 sigma).

Prints, per mode: mean / median samples per example (selection + estimation), wall time, the ratios
fixed / sequential, and certified accuracy at each radius (fraction of the images with the label certified
at that radius). Goal: >= 10x fewer samples and >= 5x less wall time than fixed-N, certified accuracy within
1 point. Run with one thread (``OMP_NUM_THREADS=1``): the 2-core machines are shared.

``--n-fixed M`` runs fixed-N CERTIFY on the first M images only (100 x 100,100 forward passes take about two
hours on one shared core); the sequential modes still run on all ``--n-images``. Ratios are then per example
(samples and wall time per image), and the accuracy comparison is made on the M common images (and the
sequential modes' accuracy on all images is printed beside it).

    OMP_NUM_THREADS=1 python benchmarks/certify_sequential.py [--n-images 100] [--n-fixed 100] [--N 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def cert_acc(df, r: float) -> float:
    return float(((df["predict"] == df["label"]) & (df["radius"] >= r - 1e-12)).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=100)
    ap.add_argument("--n-fixed", type=int, default=None, help="fixed-N CERTIFY on the first M images only")
    ap.add_argument("--N0", type=int, default=100)
    ap.add_argument("--N", type=int, default=100_000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--sigma", type=float, default=0.25)
    ap.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-adaptive", action="store_true")
    a = ap.parse_args()

    from robcli.certify.sequential import SequentialConfig, run_sequential
    from robcli.certify.smoothing import CertifyConfig, run_certify
    from robcli.data.registry import load_split
    from robcli.models import load_model
    from robcli.train.config import FinetuneConfig
    from robcli.train.loop import finetune

    dev = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = finetune(FinetuneConfig(loss="noise", dataset="digits", out=f"{tmp}/run", model="small_cnn",
                                      sigma=a.sigma, epochs=a.epochs, seed=a.seed, device=a.device))
        t_train = time.perf_counter() - t0
        data = load_split("digits", "test").select(n_ex=a.n_images)
        n_fixed = a.n_images if a.n_fixed is None else min(a.n_fixed, a.n_images)
        data_fixed = load_split("digits", "test").select(n_ex=n_fixed)
        model = load_model(str(res.run_dir), dataset_info=data.info).model
    log = res.log.iloc[res.best_epoch - 1] if res.best_epoch >= 1 else res.log.iloc[-1]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {dev}; trained small_cnn "
          f"(noise sigma={a.sigma}, {a.epochs} epochs, {t_train:.0f} s, val acc {log['val_nat_acc']:.3f}); "
          f"{a.n_images} test images (fixed-N on the first {n_fixed}), N0={a.N0}, N={a.N}, alpha={a.alpha}, batch={a.batch}")

    def timed(fn):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        df = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return df, time.perf_counter() - t

    radii = tuple(a.radii)
    runs = {}
    fixed_cfg = CertifyConfig(sigmas=(a.sigma,), N0=a.N0, N=a.N, alpha=a.alpha, batch=a.batch, seed=a.seed)
    seq = dict(sigmas=(a.sigma,), N0=a.N0, N=a.N, alpha=a.alpha, batch=a.batch, seed=a.seed)
    modes = [
        ("sequential --radius (prediction)", lambda: run_sequential(model, data, SequentialConfig(radii=radii, **seq), device=dev)),
        ("sequential --radius --against label", lambda: run_sequential(
            model, data, SequentialConfig(radii=radii, against="label", **seq), device=dev)),
    ]
    if not a.skip_adaptive:
        # the adaptive mode matches CERTIFY's radius, so confident examples run to the cap like fixed-N: it runs
        # on the fixed-N images
        modes.append(("sequential adaptive (prediction)",
                      lambda: run_sequential(model, data_fixed, SequentialConfig(**seq), device=dev)))
    df, t = timed(lambda: run_certify(model, data_fixed, fixed_cfg, device=dev))
    df["n_used"] = df["N0"] + df["N"]
    runs["fixed-N CERTIFY"] = (df, t)
    for name, fn in modes:
        runs[name] = timed(fn)

    f_df, f_t = runs["fixed-N CERTIFY"]
    f_n, f_te = f_df["n_used"].mean(), f_t / len(f_df)
    common = set(f_df["idx"].tolist())
    head = (f"{'mode':38s} {'images':>6s} {'mean n':>9s} {'median n':>9s} {'at cap':>7s} {'wall s':>8s} "
            f"{'s/image':>8s} {'n ratio':>8s} {'t ratio':>8s}  " + "  ".join(f"acc@{r:g}" for r in radii)
            + "  | on the fixed-N images: " + "  ".join(f"acc@{r:g}" for r in radii))
    print(head)
    for name, (df, t) in runs.items():
        n = df["n_used"].to_numpy()
        at_cap = float((df["N"] >= a.N).mean())
        te = t / len(df)
        accs = "  ".join(f"{cert_acc(df, r):7.3f}" for r in radii)
        sub = df[df["idx"].isin(common)]
        accs_c = "  ".join(f"{cert_acc(sub, r):7.3f}" for r in radii)
        print(f"{name:38s} {len(df):6d} {n.mean():9.0f} {np.median(n):9.0f} {at_cap:7.2f} {t:8.1f} {te:8.3f} "
              f"{f_n / n.mean():8.1f} {f_te / te:8.1f}  {accs}  | {accs_c}")
    print("accuracy differences to fixed-N on the common images (points): " + "; ".join(
        f"{name}: " + ", ".join(
            f"r={r:g} {100 * (cert_acc(df[df['idx'].isin(common)], r) - cert_acc(f_df, r)):+.1f}" for r in radii)
        for name, (df, _) in runs.items() if name != "fixed-N CERTIFY"))
    fr = f_df.set_index("idx")
    for name, (df, _) in runs.items():
        if name == "fixed-N CERTIFY" or "adaptive" in name:
            continue
        sr = df.set_index("idx").loc[sorted(common)]
        agree = [float(((fr["predict"] == fr["label"]) & (fr["radius"] >= r)).eq(
            (sr["predict"] == sr["label"]) & (sr["radius"] >= r)).mean()) for r in radii]
        print(f"{name}: per-image agreement with fixed-N on 'label certified at r': "
              + ", ".join(f"r={r:g} {v:.3f}" for r, v in zip(radii, agree)))
    if "sequential adaptive (prediction)" in runs:
        ad = runs["sequential adaptive (prediction)"][0]
        both = f_df.set_index("idx")["radius"].sub(ad.set_index("idx")["radius"]).dropna()
        print(f"adaptive radius vs fixed-N radius: mean difference {both.mean():+.4f}, "
              f"max {both.max():+.4f} (positive: fixed-N larger); stops: "
              + ", ".join(f"{k} {v}" for k, v in ad["stop"].value_counts().items()))


if __name__ == "__main__":
    main()
