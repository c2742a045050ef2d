"""Benchmark: one mixing-network training step vs the bare cost of one forward+backward through both base models.

Issue 5, "Speed": a training step of the mixing network must cost at most 1.3x one forward+backward of the
attack through both base models (the base models must not run twice per step: features are tapped by hooks in
the same forward pass).

Measured, interleaved (A, B, A, B, ... to share the machine's load fairly), medians over ``--reps``:
  bare      : g(x), h(x) with x.requires_grad, backward of both to x           (what one attack step must pay)
  update    : ``mixnet_step`` on the same inputs (clean half + attacked half): base models once under no_grad
              with hooked features, alpha net forward+backward, AdamW step       -> ratio update / bare (goal <= 1.3)
  attack    : one white-box attack step through the mixture (forward_with_alpha + backward to x)
              -> ratio attack / bare (the extra cost of the alpha path inside every attack step)

Usage: ``python benchmarks/mixnet_step.py [--arch small_cnn] [--batch 256] [--reps 30] [--device auto]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--shape", default="1,8,8", help="input shape C,H,W (digits: 1,8,8; CIFAR: 3,32,32)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256, help="clean examples per step (the step sees 2x: clean + attacked)")
    ap.add_argument("--width", type=int, default=16, help="alpha network width")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    a = ap.parse_args()

    from robcli.mixing.alphanet import build_alpha_net, default_layers
    from robcli.mixing.mixed import MixedClassifier
    from robcli.mixing.train import MixnetConfig, mixnet_step
    from robcli.models.io import build
    from robcli.utils.device import resolve_device

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    shape = tuple(int(s) for s in a.shape.split(","))
    torch.manual_seed(0)
    g = build(a.arch, a.classes, shape).to(dev).eval()
    h = build(a.arch, a.classes, shape).to(dev).eval()
    lay = default_layers(g, a.arch)
    net = build_alpha_net(g, h, lay, lay, shape, width=a.width, device=dev)
    m = MixedClassifier(g, h, net, layers_g=lay, layers_h=lay, num_classes=a.classes).to(dev)
    opt = torch.optim.AdamW(m.alpha_net.parameters(), 1e-3)
    cfg = MixnetConfig(eps=8 / 255)
    x = torch.rand((a.batch, *shape), device=dev)
    xa = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, a.classes, (a.batch,), device=dev)
    both = torch.cat([x, xa])
    yy = torch.cat([y, y])

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def bare():
        xr = both.clone().requires_grad_(True)
        loss = F.cross_entropy(g(xr), yy) + F.cross_entropy(h(xr), yy)
        torch.autograd.grad(loss, xr)

    def update():
        mixnet_step(m, opt, x, y, xa, cfg)

    def attack():
        m.eval()
        xr = both.clone().requires_grad_(True)
        z, al = m.forward_with_alpha(xr)
        torch.autograd.grad(F.cross_entropy(z, yy) + torch.log1p(-al).sum(), xr)

    fns = {"bare": bare, "update": update, "attack": attack}
    for f in fns.values():  # warm-up
        for _ in range(3):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(a.reps):
        for k, f in fns.items():
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = 2 * a.batch
    print(f"device={dev} arch={a.arch} shape={shape} inputs/step={n} alpha-net width={a.width} reps={a.reps}")
    for k in fns:
        print(f"  {k:7s} median {1e3 * med[k]:8.2f} ms")
    print(f"ratio update/bare = {med['update'] / med['bare']:.2f}  (goal <= 1.3)")
    print(f"ratio attack-step-through-mixture/bare = {med['attack'] / med['bare']:.2f}")


if __name__ == "__main__":
    main()
