"""BatchNorm handling for adversarial training.

Policy (README "Training choices"; the reference ERA code never updates BN statistics at all):

* adversarial examples are *generated* with the model in eval mode (:func:`eval_mode`): BN normalizes with
  its running statistics and nothing is updated;
* the *clean* training forward runs in train mode and is the only forward that updates the running
  statistics;
* adversarial (or noisy) forwards whose outputs enter the loss run in train mode inside
  :func:`frozen_bn_stats`: BN still normalizes with the statistics of that batch (as in TRADES), but the
  running mean/var and ``num_batches_tracked`` are left untouched.

:func:`frozen_bn_stats` sets ``track_running_stats = False`` on every BN module for the duration of the
block. In train mode PyTorch then normalizes with batch statistics and passes no running buffers to
``F.batch_norm``, so nothing is written (unlike ``momentum = 0``, which still bumps ``num_batches_tracked``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, BN layers use batch statistics (in train mode) but never update running stats."""
    touched = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for m in touched:
        m.track_running_stats = False
    try:
        yield model
    finally:
        for m in touched:
            m.track_running_stats = True


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode for the block (adversary generation), then restore its mode."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
