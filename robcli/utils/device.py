"""Device resolution: ``auto`` means CUDA when present, else CPU. Library code takes a torch.device."""

from __future__ import annotations

from robcli.errors import UsageError


def resolve_device(spec: str = "auto"):
    """``auto`` -> CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` are checked.

    One rank of a launched job: :func:`resolve_rank_device`.

    Raises:
        UsageError: an unknown or unavailable device.
    """
    import torch

    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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


def resolve_rank_device(spec: str, world):
    """:func:`resolve_device` for one rank of a launched job (``world``: a :class:`robcli.distributed.World`).

    Under torchrun/srun, ``auto`` (with CUDA present) and ``cuda`` mean this rank's own GPU,
    ``cuda:LOCAL_RANK``; ``cuda:N`` and ``cpu`` are taken as given. A single process: :func:`resolve_device`.

    Raises:
        UsageError: as :func:`resolve_device`, or a local rank without a GPU of its own.
    """
    import torch

    s = (spec or "auto").strip().lower()
    if not world.grouped or s not in ("auto", "cuda") or (s == "auto" and not torch.cuda.is_available()):
        return resolve_device(spec)
    resolve_device("cuda")  # CUDA must be available
    n = torch.cuda.device_count()
    if world.local_rank >= n:
        raise UsageError(f"--device {spec}: {world.label} has local rank {world.local_rank} but this node has only "
                         f"{n} CUDA device(s); start at most {n} processes per node")
    return torch.device("cuda", world.local_rank)


# --precision: the dtype of the forward passes of attack and certify (autocast on CUDA)
PRECISIONS = ("fp32", "bf16", "fp16")


def parse_precision(precision: str) -> str:
    """``fp32``, ``bf16`` or ``fp16`` (case-insensitive), else a one-line UsageError."""
    p = str(precision).strip().lower()
    if p not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: choose {', '.join(PRECISIONS)}")
    return p


def check_precision(precision: str, device) -> None:
    """Refuse a reduced precision off CUDA: robcli runs (and tests) bf16/fp16 autocast on the GPU only; on a CPU
    its speed depends on the CPU's bf16 support (small_cnn forward on this project's 2-core machine: 0.6x the
    fp32 time; reported about 12x slower elsewhere), and fp16 CPU kernels are incomplete."""
    import torch

    if precision == "fp32":
        return
    if device.type != "cuda":
        raise UsageError(f"--precision {precision} needs CUDA (autocast on the GPU); on {device.type} robcli runs "
                         "fp32 only")
    if precision == "bf16" and torch.cuda.get_device_properties(device).major < 8:  # native bf16: Ampere and later
        raise UsageError(f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16; "
                         "use fp16 or fp32")
