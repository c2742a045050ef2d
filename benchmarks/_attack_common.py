"""Shared setup of the attack benchmarks: a small_cnn trained on digits for 2 epochs with plain SGD."""

from __future__ import annotations

import torch


def trained_digits_cnn(epochs: int = 2, seed: int = 0):
    """small_cnn trained inside the benchmark (plain SGD, lr 0.05, momentum 0.9, batch 64), eval mode."""
    from robcli.data.registry import load_split
    from robcli.models import build

    tr = load_split("digits", "train")
    info = tr.info
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build("small_cnn", info.num_classes, info.input_shape, mean=info.mean, std=info.std)
        x, y = tr.tensors()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(y))
            for i in range(0, len(y), 64):
                b = perm[i:i + 64]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
                opt.step()
    return model.eval()
