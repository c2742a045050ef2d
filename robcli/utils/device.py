"""Device resolution: ``auto`` means CUDA when present, else CPU. Library code takes a torch.device."""

from __future__ import annotations

from robcli.errors import UsageError


def resolve_device(spec: str = "auto", local_rank: int | None = None):
    """``auto`` -> CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` are checked.

    ``local_rank``: this process's index on its node under a launcher (torchrun, srun): ``auto`` and a bare
    ``cuda`` then pick ``cuda:LOCAL_RANK`` (modulo the number of GPUs), so each rank drives its own GPU.

    Raises:
        UsageError: an unknown or unavailable device.
    """
    import torch

    s = (spec or "auto").strip().lower()
    if s == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        s = "cuda"
    if s == "cuda" and local_rank is not None and torch.cuda.is_available():
        return torch.device("cuda", int(local_rank) % torch.cuda.device_count())
    if s == "cuda" or s.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        try:
            dev = torch.device(s)
        except RuntimeError:
            raise UsageError(f"--device {spec!r} is malformed; use cuda or cuda:N") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    if s == "cpu":
        return torch.device("cpu")
    if s == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UsageError("--device mps: MPS is not available on this machine")
        return torch.device("mps")
    raise UsageError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
