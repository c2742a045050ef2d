"""robcli certify vs the bare cost of the model's forward passes on the same number of noisy inputs.

Bare cost: ``model(xb)`` under ``inference_mode`` on one pre-built noisy batch, repeated as many times as
certify runs forward passes (same batch size, same memory format as robcli uses, no noise generation, no
counting, no statistics). Prints robcli_time / bare_time (goal <= 1.1: the certification machinery --
per-example seeded noise, vote counting, bounds, rows -- adds at most 10%).

The two are run alternately ``--repeats`` times and the best time of each is compared (shared machine).

    python benchmarks/certify_overhead.py [--n-images 2] [--N 100000] [--repeats 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from math import ceil

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=2)
    ap.add_argument("--N0", type=int, default=100)
    ap.add_argument("--N", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.12)
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="alternating repetitions; the best of each is compared")
    a = ap.parse_args()

    from robcli.certify.smoothing import CertifyConfig, VoteCounter, group_size, run_certify
    from robcli.data.registry import load_split
    from robcli.models import load_model

    dev = torch.device(a.device)
    data = load_split("digits", "test").select(n_ex=a.n_images)
    cfg = CertifyConfig(sigmas=(a.sigma,), N0=a.N0, N=a.N, alpha=0.001, batch=a.batch)
    model = load_model(a.arch, dataset_info=data.info, seed=0).model.to(dev).eval()
    x, _ = data.tensors()
    x = x.to(dev)

    # the forward passes certify runs: per group of G examples, ceil(G*num/batch)-ish chunks per phase
    G = group_size(cfg)
    shapes = []
    for s in range(0, a.n_images, G):
        g = min(G, a.n_images - s)
        for num in (a.N0, a.N):
            done = 0
            while done < num:
                b = min(1000, num - done)
                tot = g * b
                shapes += [min(a.batch, tot - i) for i in range(0, tot, a.batch)]
                done += b
    counter = VoteCounter(model, 10, dev, a.batch)  # same memory format (channels_last) as certify
    noisy = (x[:1] + a.sigma * torch.randn((a.batch, *x.shape[1:]), device=dev)).contiguous()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def bare() -> float:
        with torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            for n in shapes:
                counter._forward(noisy[:n])
            sync()
            return time.perf_counter() - t0

    def certify() -> float:
        sync()
        t0 = time.perf_counter()
        run_certify(model, data, cfg, device=dev)
        sync()
        return time.perf_counter() - t0

    with torch.inference_mode():
        counter._forward(noisy)  # warm-up
    # alternate the two and keep each one's best time: the machine is shared, load drifts between runs
    t_bare, t_rc = float("inf"), float("inf")
    for _ in range(a.repeats):
        t_bare = min(t_bare, bare())
        t_rc = min(t_rc, certify())
    n_inputs = sum(shapes)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {dev}, {a.arch}, "
          f"{a.n_images} images, N0={a.N0}, N={a.N}, batch={a.batch}: {n_inputs} noisy inputs in {len(shapes)} passes "
          f"(ceil check {ceil(n_inputs / a.batch)})")
    print(f"bare forward passes: {t_bare:.2f} s ({n_inputs / t_bare:.0f} inputs/s)")
    print(f"robcli certify:      {t_rc:.2f} s")
    print(f"ratio robcli/bare = {t_rc / t_bare:.3f}  (goal <= 1.1)")


if __name__ == "__main__":
    main()
