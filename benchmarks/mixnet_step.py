"""Benchmark: a full mixing-network training step vs the bare cost of the attack through both base models.

Issue 5, "Speed": "a training step of the mixing network against the bare cost of one forward+backward of the
attack through both base models: at most 1.3x". A training step is the training attack (``k`` forward+backward
passes through the mixture, alpha network included) plus the update (one forward of both base models under
no_grad with hooked features, alpha net forward+backward, AdamW step). Its bare cost is what any attack on the
two base models must pay for the same work: ``k`` forward+backward passes of g and h to the input, plus the
one forward of g and h on the update's inputs (clean + attacked half).

Measured, interleaved (every variant once per rep, in turn, so that the shared machine's load hits all of
them alike), medians over ``--reps``:
  bare_step   : g(x), h(x) with x.requires_grad, CE of both, backward to x              (B inputs)
  attack_step : one white-box attack step through the mixture: forward_with_alpha, CE + alpha term,
                backward to x                                                            (B inputs)
  bare_fwd    : g and h forward under no_grad                                            (2B inputs)
  bare_fb     : bare_step on the 2B inputs of the update
  update      : ``mixnet_step`` (clean half + attacked half)                             (2B inputs)
  full        : setting-B training attack with ``k`` steps (``pgd_mix`` with the alpha term, the alpha net in
                eval mode, full alpha range) followed by ``mixnet_step``

Ratios (goal <= 1.3 for the gated ones; the exit status is 1 when a gated ratio misses its goal):
  full / (k * bare_step + bare_fwd)      GATED: the issue's number
  update / bare_fb                       GATED: the update alone against one bare forward+backward of its inputs
  attack_step / bare_step                informational: the alpha path's extra cost inside every attack step
                                         (the full-step ratio is dominated by it for k >= 2)

Usage: ``OMP_NUM_THREADS=1 python benchmarks/mixnet_step.py [--arch small_cnn] [--batch 256] [--k 10]
[--reps 30] [--device auto] [--no-gate]``. Use ``--profile`` for a torch.profiler table of one attack step.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

GOAL = 1.3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--shape", default="1,8,8", help="input shape C,H,W (digits: 1,8,8; CIFAR: 3,32,32)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256, help="clean examples per step (the update sees 2x: clean + attacked)")
    ap.add_argument("--k", type=int, default=10, help="training attack steps (MixnetConfig.steps default: 10)")
    ap.add_argument("--width", type=int, default=16, help="alpha network width")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--no-gate", action="store_true", help="always exit 0 (report only)")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of attack steps and exit")
    a = ap.parse_args(argv)

    from robcli.mixing.alphanet import build_alpha_net, default_layers
    from robcli.mixing.attacks import make_loss, pgd_mix
    from robcli.mixing.mixed import MixedClassifier
    from robcli.mixing.train import MixnetConfig, mixnet_step
    from robcli.models import build
    from robcli.utils.device import resolve_device

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = resolve_device(a.device)
    shape = tuple(int(s) for s in a.shape.split(","))
    torch.manual_seed(0)
    g = build(a.arch, a.classes, shape).to(dev).eval()
    h = build(a.arch, a.classes, shape).to(dev).eval()
    for p in list(g.parameters()) + list(h.parameters()):
        p.requires_grad_(False)  # the mixture freezes them too: the bare passes must not pay for weight grads
    lay = default_layers(g, a.arch)
    net = build_alpha_net(g, h, lay, lay, shape, width=a.width, device=dev)
    m = MixedClassifier(g, h, net, layers_g=lay, layers_h=lay, num_classes=a.classes).to(dev)
    opt = torch.optim.AdamW(m.alpha_net.parameters(), 1e-3)
    cfg = MixnetConfig(eps=8 / 255, steps=a.k)
    x = torch.rand((a.batch, *shape), device=dev)
    xa = (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, a.classes, (a.batch,), device=dev)
    both = torch.cat([x, xa])
    yy = torch.cat([y, y])
    eps_b = cfg.eps * (0.25 + 0.75 * torch.rand(a.batch, device=dev))
    loss_b = make_loss("ce", 0.5)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def bare_on(inp, lab):
        xr = inp.clone().requires_grad_(True)
        loss = F.cross_entropy(g(xr), lab) + F.cross_entropy(h(xr), lab)
        torch.autograd.grad(loss, xr)

    def bare_step():
        bare_on(x, y)

    def bare_fb():
        bare_on(both, yy)

    def bare_fwd():
        with torch.no_grad():
            g(both)
            h(both)

    def attack_step():
        m.eval()
        with m.full_range():
            xr = x.clone().requires_grad_(True)
            z, al = m.forward_with_alpha(xr)
            torch.autograd.grad(loss_b(z, al, y, None).sum(), xr)

    def update():
        mixnet_step(m, opt, x, y, xa, cfg)

    def full():
        m.eval()
        with m.full_range():
            x_adv = pgd_mix(m, x, y, eps=eps_b, norm="Linf", steps=a.k, loss=loss_b)
        mixnet_step(m, opt, x, y, x_adv, cfg)

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        for _ in range(3):
            attack_step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                attack_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
        return 0

    fns = {"bare_step": bare_step, "attack_step": attack_step, "bare_fwd": bare_fwd, "bare_fb": bare_fb,
           "update": update, "full": full}
    for f in fns.values():  # warm-up
        for _ in range(2):
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
    print(f"device={dev} arch={a.arch} shape={shape} batch={a.batch} (update: {2 * a.batch} inputs) k={a.k} "
          f"alpha-net width={a.width} reps={a.reps} threads={torch.get_num_threads()}")
    for k in fns:
        print(f"  {k:11s} median {1e3 * med[k]:9.2f} ms")
    bare_full = a.k * med["bare_step"] + med["bare_fwd"]
    ratios = {
        "full/(k*bare_step+bare_fwd)": (med["full"] / bare_full, True),
        "update/bare_fb": (med["update"] / med["bare_fb"], True),
        "attack_step/bare_step": (med["attack_step"] / med["bare_step"], False),
    }
    failed = []
    for name, (r, gated) in ratios.items():
        if gated:
            ok = r <= GOAL
            print(f"ratio {name:28s} = {r:.3f}  (goal <= {GOAL}) {'ok' if ok else 'MISSED'}")
            if not ok:
                failed.append(name)
        else:
            print(f"ratio {name:28s} = {r:.3f}  (informational)")
    if failed and not a.no_gate:
        print(f"goal missed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
