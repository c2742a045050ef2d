"""A model run in reduced precision: ``--precision bf16|fp16`` of attack and certify.

:func:`in_precision` wraps a model so that every forward pass runs under CUDA autocast in that dtype and returns
float32 logits. Every use of the model goes through it (the attack's steps and its re-evaluation of the
adversarial points; certify's noisy forward passes), so a table made with ``--precision bf16`` is about the
classifier *as run in bf16*: its certificates hold for that classifier, which may differ from the fp32 one near
its decision boundaries.
"""

from __future__ import annotations

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Autocast(torch.nn.Module):
    """``model`` with its forward pass under ``torch.autocast("cuda", dtype)``; float32 logits out."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cuda", dtype=self.dtype):
            out = self.model(x)
        return out.float()


def in_precision(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``model`` itself for fp32, else wrapped in :class:`Autocast` (checked by
    :func:`robcli.utils.device.check_precision` first)."""
    return model if precision == "fp32" else Autocast(model, DTYPES[precision])
