"""Parsing and validation of flag values (no torch import here: used by the CLI at parse time)."""

from __future__ import annotations

import math

from robcli.errors import UsageError

NORMS = ("Linf", "L2")


def parse_float_expr(text: str | float, what: str = "value") -> float:
    """Parse ``0.031``, ``8/255`` or ``1e-3`` into a float. Never evaluates arbitrary expressions."""
    if isinstance(text, bool):
        raise UsageError(f"{what} {text!r} is not a number")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip()
        try:
            if "/" in s:
                num, den = s.split("/", 1)
                d = float(den)
                if d == 0:
                    raise UsageError(f"{what} {text!r} divides by zero")
                value = float(num) / d
            else:
                value = float(s)
        except ValueError:
            raise UsageError(f"{what} {text!r} is not a number (use e.g. 0.031 or 8/255)") from None
    if not math.isfinite(value):
        raise UsageError(f"{what} {text!r} is not a finite number")
    return value


def parse_eps(text: str | float, norm: str = "Linf") -> float:
    """Parse and validate a perturbation radius: finite, >= 0, and at most 1 for Linf (pixels in [0,1]).

    Args:
        text: ``"8/255"``, ``"0.031"``, ``"1e-3"`` or a number.
        norm: the threat model; any norm name :func:`parse_norm` accepts.

    Raises:
        UsageError: not a number, not finite, negative, division by zero, or Linf > 1.
    """
    norm = parse_norm(norm)
    value = parse_float_expr(text, "eps")
    if value < 0:
        raise UsageError(f"eps {text!r} is negative; a radius must be >= 0")
    if norm == "Linf" and value > 1:
        raise UsageError(f"eps {text!r} > 1 is meaningless for Linf on pixels in [0,1]")
    return value


def parse_norm(text: str) -> str:
    """Canonicalize a norm name (``linf``, ``Linf``, ``inf`` -> ``Linf``; ``l2`` -> ``L2``)."""
    t = str(text).strip().lower()
    if t in ("linf", "inf", "l_inf", "l-inf", "linfty", "l_infty"):
        return "Linf"
    if t in ("l2", "2", "l_2", "l-2"):
        return "L2"
    raise UsageError(f"unknown norm {text!r}; choose one of {', '.join(NORMS)}")


def parse_fraction_in(text: str | float, what: str, lo: float, hi: float, *, lo_open=False, hi_open=False) -> float:
    """Parse a number and check it lies in [lo, hi] (open ends when asked)."""
    v = parse_float_expr(text, what)
    bad = v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi)
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise UsageError(f"{what} {text!r} is outside {lb}{lo}, {hi}{rb}")
    return v


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``I/K`` (0-based shard I of K); ``None`` means no sharding.

    Raises:
        UsageError: not of the form I/K with 0 <= I < K.
    """
    if text is None:
        return None
    try:
        i, k = (int(p) for p in str(text).split("/"))
    except (ValueError, TypeError):
        raise UsageError(f"--shard {text!r} must look like I/K, e.g. 0/4") from None
    if k < 1 or not 0 <= i < k:
        raise UsageError(f"--shard {text!r}: need 0 <= I < K")
    return i, k
