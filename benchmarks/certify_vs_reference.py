"""robcli certify vs a faithful re-implementation of Cohen et al.'s reference CERTIFY loop.

The reference (locuslab/smoothing, ``core.py``) certifies one image at a time: for N0 and then N samples it
repeats the image ``batch`` times, draws ``randn_like`` noise, runs the model, takes the argmax, moves the
predictions to the host and counts them in a Python loop (``_count_arr``); the bound is the Clopper-Pearson
lower bound (statsmodels there, the identical ``scipy.stats.beta.ppf`` here). A second reference variant
counts with ``np.bincount`` instead of the Python loop (a fairer baseline; both are printed).

Same model (digits ``small_cnn``, seeded weights: speed does not depend on training), same images, same
N0/N/batch, one run each. Prints the ratios reference_time / robcli_time (goal >= 2 on CPU).

    python benchmarks/certify_vs_reference.py [--n-images 3] [--N 100000] [--compile] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from math import ceil

import numpy as np
import torch
from scipy.stats import beta, norm


def reference_certify(model, x, n0, n, alpha, batch, sigma, num_classes, counting="python"):
    """Cohen et al.'s Smooth.certify for one image x (C, H, W)."""

    def count_arr(arr):
        if counting == "bincount":
            return np.bincount(arr, minlength=num_classes)
        counts = np.zeros(num_classes, dtype=int)
        for idx in arr:
            counts[idx] += 1
        return counts

    def sample_noise(num):
        with torch.no_grad():
            counts = np.zeros(num_classes, dtype=int)
            for _ in range(ceil(num / batch)):
                this = min(batch, num)
                num -= this
                b = x.repeat((this, 1, 1, 1))
                noise = torch.randn_like(b) * sigma
                predictions = model(b + noise).argmax(1)
                counts += count_arr(predictions.cpu().numpy())
            return counts

    c0 = sample_noise(n0)
    c_a = int(c0.argmax())
    c = sample_noise(n)
    n_a = int(c[c_a])
    p = beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0
    return (-1, 0.0) if p < 0.5 else (c_a, sigma * norm.ppf(p))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=3)
    ap.add_argument("--N0", type=int, default=100)
    ap.add_argument("--N", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.12)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()

    from robcli.certify.smoothing import CertifyConfig, run_certify
    from robcli.data.registry import load_split
    from robcli.models import load_model

    dev = torch.device(a.device)
    data = load_split("digits", "test").select(n_ex=a.n_images)
    model = load_model("small_cnn", dataset_info=data.info, seed=0).model.to(dev).eval()
    x, _ = data.tensors()
    x = x.to(dev)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {dev}, "
          f"{a.n_images} images, N0={a.N0}, N={a.N}, batch={a.batch}")

    with torch.no_grad():
        model(x[:1].repeat(a.batch, 1, 1, 1))  # warm-up, not counted
    times = {}
    for counting in ("python", "bincount"):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        for i in range(a.n_images):
            reference_certify(model, x[i], a.N0, a.N, 0.001, a.batch, a.sigma, 10, counting)
        times[counting] = time.perf_counter() - t0
        print(f"reference ({counting} counting): {times[counting]:.2f} s")

    ref_model = load_model("small_cnn", dataset_info=data.info, seed=0).model  # fresh copy (channels_last mutates)
    cfg = CertifyConfig(sigmas=(a.sigma,), N0=a.N0, N=a.N, alpha=0.001, batch=a.batch, compile=a.compile)
    if a.compile:  # warm-up compile outside the timed run (the one-off cost is printed)
        t0 = time.perf_counter()
        run_certify(ref_model, data.select(n_ex=1), CertifyConfig(sigmas=(a.sigma,), N0=100, N=2 * a.batch,
                    alpha=0.01, batch=a.batch, compile=True), device=dev)
        print(f"compile warm-up: {time.perf_counter() - t0:.1f} s (not counted)")
    t0 = time.perf_counter()
    run_certify(ref_model, data, cfg, device=dev)
    t_rc = time.perf_counter() - t0
    print(f"robcli certify{' --compile' if a.compile else ''}: {t_rc:.2f} s")
    print(f"ratio reference(python counting)/robcli = {times['python'] / t_rc:.2f}x  (goal >= 2)")
    print(f"ratio reference(bincount)/robcli        = {times['bincount'] / t_rc:.2f}x")


if __name__ == "__main__":
    main()
