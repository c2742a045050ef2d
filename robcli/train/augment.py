"""Training-time data augmentation, seeded by an explicit generator.

* ``none``.
* ``standard``: random crop with zero padding (``max(1, H // 8)`` pixels: 4 for 32x32, 1 for 8x8) and a
  random horizontal flip, per example. The flip is skipped for data sets of digits/characters (digits,
  mnist, svhn), where a mirrored digit is another (or no) digit.
* ``autoaugment``: torchvision v2 AutoAugment (CIFAR-10 policy) applied per image to uint8 pixels; the
  global RNG it draws from is forked and seeded from our generator, so runs stay reproducible.
Images only: vector data (e.g. the 2-D Gaussians) is refused at configuration time.
"""

from __future__ import annotations

import torch

NO_FLIP = ("digits", "mnist", "svhn")


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, *, pad: int | None = None, flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding) and optional horizontal flip of a batch (B, C, H, W) in [0, 1]."""
    b, c, h, w = x.shape
    p = max(1, h // 8) if pad is None else pad
    xp = torch.nn.functional.pad(x, (p, p, p, p))
    oy = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # (B, H)
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        f = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        out = torch.where(f.view(-1, 1, 1, 1), out.flip(3), out)
    return out.contiguous()


def autoaugment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """torchvision v2 AutoAugment (CIFAR-10 policy) per image on uint8 pixels; returns floats in [0, 1]."""
    from torchvision.transforms import v2

    aa = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    u8 = (x.detach().cpu() * 255).round().clamp(0, 255).to(torch.uint8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([aa(img) for img in u8])
    return out.to(x.device, torch.float32).div_(255.0)


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator, dataset: str = "") -> torch.Tensor:
    """Apply augmentation ``kind`` (none|standard|autoaugment) to an image batch."""
    if kind == "none":
        return x
    if kind == "standard":
        return random_crop_flip(x, gen, flip=dataset not in NO_FLIP)
    if kind == "autoaugment":
        return autoaugment(x, gen)
    raise ValueError(f"unknown augmentation {kind!r}")
