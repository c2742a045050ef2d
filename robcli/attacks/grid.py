"""Exhaustive grid search over the eps-ball for very low-dimensional inputs (the 2-D Gaussians).

Gradient attacks miss thin non-robust slivers of a 2-D decision region (a random start rarely lands in
them and the gradient outside them may be zero). The grid attack evaluates the model on a dense grid of
perturbations covering the ball: for Linf the full square (cube) ``[-eps, eps]^d`` with ``points`` values
per axis; for L2 the same grid restricted to the disk (ball) plus ``4 * points`` points on its boundary
circle (d = 2; a Fibonacci sphere for d = 3; the two end points for d = 1). Perturbed points are clipped to
[0,1], which keeps them inside the ball. It is exhaustive only up to the grid spacing
``2 eps / (points - 1)``: a region thinner than that can still be missed, so it is combined with APGD.
"""

from __future__ import annotations

import math

import torch

from robcli.attacks.apgd import obj_margin
from robcli.errors import UsageError

MAX_DIM = 3
DEFAULT_POINTS = {1: 2001, 2: 101, 3: 31}  # per axis; 101^2 = 10,201 points per example in 2-D


def check_dim(input_shape) -> int:
    """The flat input dimension, refusing anything above :data:`MAX_DIM`.

    Raises:
        UsageError: the grid attack is only feasible for inputs of dimension <= 3.
    """
    d = int(math.prod(input_shape))
    if d > MAX_DIM:
        raise UsageError(
            f"--attack grid needs inputs of dimension <= {MAX_DIM} (e.g. gaussians); these have {d} "
            f"(shape {tuple(input_shape)}); use apgd-ce, apgd-t or autoattack"
        )
    return d


def grid_offsets(d: int, eps: float, norm: str, points: int, device=None) -> torch.Tensor:
    """Perturbations (P, d) covering the eps-ball of the norm (see module docstring)."""
    if points < 2:
        raise UsageError(f"--grid-points {points} must be >= 2")
    axis = torch.linspace(-eps, eps, points, dtype=torch.float64)
    mesh = torch.stack(torch.meshgrid(*([axis] * d), indexing="ij"), -1).reshape(-1, d)
    if norm == "L2":
        mesh = mesh[mesh.norm(dim=1) <= eps]
        if d == 1:
            bnd = torch.tensor([[-eps], [eps]], dtype=torch.float64)
        elif d == 2:
            ang = torch.arange(4 * points, dtype=torch.float64) * (2 * math.pi / (4 * points))
            bnd = eps * torch.stack([ang.cos(), ang.sin()], 1)
        else:
            n = 4 * points * points
            i = torch.arange(n, dtype=torch.float64) + 0.5
            phi = torch.acos(1 - 2 * i / n)
            theta = math.pi * (1 + 5 ** 0.5) * i
            bnd = eps * torch.stack([theta.cos() * phi.sin(), theta.sin() * phi.sin(), phi.cos()], 1)
        # keep boundary points inside the ball despite float rounding
        bnd = bnd * (eps / bnd.norm(dim=1, keepdim=True).clamp_min(1e-300)).clamp(max=1.0) * (1 - 1e-9)
        mesh = torch.cat([mesh, bnd])
    return mesh.to(device=device, dtype=torch.float32)


@torch.no_grad()
def grid_search(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, points: int | None = None,
                chunk: int = 1 << 16) -> torch.Tensor:
    """Per example, the grid point of the ball with the largest margin ``max_{c != y} z_c - z_y``.

    Args:
        x: (B, *shape) inputs in [0,1] with ``prod(shape) <= 3``; y: the label to move away from.
        points: grid values per axis (default :data:`DEFAULT_POINTS`).
        chunk: at most this many model inputs per forward pass.

    Returns:
        (B, *shape) points inside the ball and [0,1].
    """
    shape = tuple(x.shape[1:])
    d = check_dim(shape)
    pts = points or DEFAULT_POINTS[d]
    off = grid_offsets(d, eps, norm, pts, device=x.device)
    p = off.shape[0]
    flat = x.reshape(x.shape[0], d)
    out = flat.clone()
    per = max(1, chunk // p)
    for s in range(0, x.shape[0], per):
        xb = flat[s:s + per]
        cand = (xb[:, None, :] + off[None]).clamp(0.0, 1.0)  # (b, P, d)
        nb = cand.shape[0]
        logits = model(cand.reshape(nb * p, *shape))
        val = obj_margin(logits, y[s:s + per].repeat_interleave(p)).view(nb, p)
        best = val.argmax(1)
        out[s:s + per] = cand[torch.arange(nb, device=x.device), best]
    return out.reshape(x.shape)
