"""Time per training step: ERA (descent, single) vs TRADES on digits with small_cnn, in one process.

Goal (issue 2): ERA step / TRADES step <= 1.3. Also reports how well ERA's short inner descent (started at
x itself, ``--era-steps``, default 2) solves eq. 8 compared with longer descents and with descents
warm-started from the TRADES point (the justification for its default step count and start), and whether
channels_last helps on this CPU.

Run (in the project's virtual environment):
    OMP_NUM_THREADS=1 python benchmarks/finetune_era_vs_trades.py [--reps 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    from robcli.data.registry import load_split
    from robcli.losses import LossConfig, get_loss
    from robcli.losses.era import DEFAULT_ERA_STEPS, descent_adversary, other_logprob
    from robcli.losses.trades import trades_adversary
    from robcli.models import load_model
    from robcli.models.bn import eval_mode

    data = load_split("digits", "train")
    x_all, y_all = data.tensors()
    lm = load_model("small_cnn", dataset_info=data.info, seed=0)
    model = lm.model.to(dev)
    # a few epochs of standard training so the model is in a realistic state
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(3):
        perm = torch.randperm(len(y_all), generator=g)
        for i in range(0, len(perm), 64):
            r = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(x_all[r].to(dev)), y_all[r].to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
    x, y = x_all[: args.batch].to(dev), y_all[: args.batch].to(dev)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def time_loss(name: str, cfg: LossConfig, channels_last: bool = False) -> float:
        model.load_state_dict(state)
        m = model.to(memory_format=torch.channels_last) if channels_last else model.to(memory_format=torch.contiguous_format)
        xb = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        fn = get_loss(name)
        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        m.train()
        times = []
        for i in range(args.reps + 2):
            t0 = time.perf_counter()
            loss, _ = fn(m, xb, y, cfg, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    base = LossConfig(eps=args.eps, norm="Linf", attack_steps=10, beta=1.0)
    print(f"digits small_cnn, batch {args.batch}, eps {args.eps}, 10-step PGD, threads {args.threads}, device {dev}")
    layouts = [False, True] if dev.type == "cpu" else [False]
    t_first = None
    for cl in layouts:
        rows = []
        t_tr = time_loss("trades", base, cl)
        rows.append(("trades", t_tr))
        rows.append((f"era descent (default {DEFAULT_ERA_STEPS} steps)", time_loss("era", replace(base, era_adv="descent"), cl)))
        rows.append(("era single", time_loss("era", replace(base, era_adv="single"), cl)))
        rows.append(("era descent, 10 steps", time_loss("era", replace(base, era_steps=10), cl)))
        rows.append((f"dga descent (default {DEFAULT_ERA_STEPS} steps)", time_loss("dga", base, cl)))
        t_tr2 = time_loss("trades", base, cl)  # second TRADES measurement shows the noise floor
        rows.append(("trades (again)", t_tr2))
        t_ref = min(t_tr, t_tr2)
        t_first = t_first or t_ref
        print(f"\nmemory format: {'channels_last' if cl else 'contiguous'}"
              + (f" (TRADES step {t_ref / t_first:.2f}x of contiguous)" if cl else ""))
        print(f"{'loss':34s} {'ms/step':>9s} {'ratio vs TRADES':>16s}")
        for name, t in rows:
            print(f"{name:34s} {1000 * t:9.1f} {t / t_ref:16.2f}")

    # quality of the inner descent (eq. 8): mean adversarial-label log-prob and flip rate
    model.load_state_dict(state)
    model.eval()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        pred = model(x).argmax(1)
    x_tr = trades_adversary(model, x, base, gen)

    def quality(xa):
        with eval_mode(model), torch.no_grad():
            z = model(xa)
        return float(other_logprob(z, pred).mean()), float((z.argmax(1) != pred).float().mean())

    print("inner descent quality (higher max_{c!=F(x)} log p_c = lower eq.-8 CE; flip = prediction changed):")
    print("  TRADES point alone          logp {:.3f}  flip {:.3f}".format(*quality(x_tr)))
    for k in (3, 10):
        xa = descent_adversary(model, x, pred, replace(base, step_size=args.eps / 4), gen, x_start=x_tr, steps=k)
        print(f"  from TRADES point, {k:2d} steps  logp %.3f  flip %.3f" % quality(xa))
    for k in (1, 2, 3, 5, 10, 20):
        xa = descent_adversary(model, x, pred, base, gen, steps=k)
        label = f"from x, {k:2d} steps" + (" (default)" if k == DEFAULT_ERA_STEPS else "")
        print(f"  {label:28s} logp %.3f  flip %.3f" % quality(xa))


if __name__ == "__main__":
    main()
