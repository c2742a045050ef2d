"""``mixnet``: the composite loss of the adaptive mixing network (004 eq. 8) in the generic loss signature.

``fn(model, x, y, cfg, gen) -> (loss, terms)`` where ``model`` must be an adaptive
:class:`robcli.mixing.mixed.MixedClassifier` (``finetune --loss mixnet --core G --robust H`` builds it); only
its alpha network has trainable parameters. Per call: a randomized training attack (setting A/B/C, radius
U(eps_low * eps, eps) per example, random step count, random alpha-term weight; the alpha network in eval mode),
then ONE forward pass of both frozen base models on clean + attacked inputs (no grad; features tapped by hooks in
that pass) and the composite loss c_CE CE + c_BCE BCE + c_prod CE BCE with pseudo labels 0 (clean) / 1 (attacked).

``LossConfig`` carries eps, norm and attack_steps; the composite constants and the training-attack setting
come from :class:`robcli.mixing.train.MixnetConfig` defaults (c_CE = 0, c_BCE = 1.5, c_prod = 0.2, setting B)
unless ``model.mixnet_config`` holds another ``MixnetConfig`` (the finetune command can set it). For the
complete procedure (EMA, alpha range off during training) use :func:`robcli.mixing.train.train_mixnet`.
"""

from __future__ import annotations

import dataclasses

import torch

from robcli.errors import UsageError
from robcli.losses import LossConfig, register_loss


@register_loss("mixnet")
def mixnet_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: LossConfig,
                gen: torch.Generator | None):
    from robcli.mixing.mixed import MixedClassifier
    from robcli.mixing.train import MixnetConfig, composite_loss, training_attack
    from robcli.utils.seeding import make_generator

    if not isinstance(model, MixedClassifier) or not model.adaptive:
        raise UsageError("--loss mixnet trains a mixing network: give --core G and --robust H (not a single --model)")
    mc = getattr(model, "mixnet_config", None)
    if not isinstance(mc, MixnetConfig):
        mc = MixnetConfig(eps=cfg.eps, norm=cfg.norm, steps=cfg.attack_steps)
    else:
        mc = dataclasses.replace(mc, eps=cfg.eps, norm=cfg.norm, steps=cfg.attack_steps)
    if gen is None:
        gen = make_generator(0, x.device)
    was = model.training
    with model.full_range():
        model.eval()
        x_adv = training_attack(model, x, y, mc, gen)
        model.train(was)
        xb = torch.cat([x, x_adv])
        yb = torch.cat([y, y])
        pseudo = torch.cat([torch.zeros_like(y), torch.ones_like(y)]).float()
        with torch.no_grad():
            zg, zh, feats = model.members(xb)
        a = model.alpha_from(feats)
        loss, terms = composite_loss(model.mix(zg, zh, a), a, yb, pseudo, mc.c_ce, mc.c_bce, mc.c_prod)
    terms["alpha_clean"] = float(a[: x.shape[0]].detach().mean())
    terms["alpha_adv"] = float(a[x.shape[0]:].detach().mean())
    return loss, terms
