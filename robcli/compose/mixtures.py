"""Mixtures of MODELS as `robcli compose --mix` / `--mix-sweep` make them (Mixing Classifiers, Bai et al.):
export the fixed-alpha mixture log((1-A) softmax(g) + A softmax(h)) of a core model g and a robust model h as a
run directory (:func:`export_mixture`), or evaluate natural and STD/ROB/MIX-attacked accuracy over a grid of
mixture weights and write it as a compose table (:func:`sweep_mixtures`). Importable from notebooks; nothing
touches a terminal and user mistakes raise robcli's typed errors before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SWEEP_COLUMNS = ["alpha", "nat_acc", "std_acc", "rob_acc", "mix_acc", "robust_acc"]


def _members(core: str, robust: list[str]) -> str:
    from robcli.errors import UsageError
    from robcli.mixing.run import require_models

    if len(robust) != 1:
        raise UsageError(f"--mix/--mix-sweep mix one --robust model with the --core model (got {len(robust)})")
    require_models(**{"--core": core, "--robust": robust[0]})
    return robust[0]


def _refuse_existing(path, force: bool) -> None:
    from robcli.errors import UsageError

    if Path(path).exists() and not force:
        raise UsageError(f"{path} exists; pass --force to overwrite")


def export_mixture(core: str, robust: list[str], mix: str, export: str | None, *, mix_space: str = "prob",
                   scale_g: float = 1.0, scale_h: float = 1.0, force: bool = False) -> float:
    """Write the mixture of ``core`` (g) and ``robust`` (h, one model) with weight ``mix`` (an expression such as
    ``"0.7"``) to the run directory ``export``; returns the weight."""
    from robcli.errors import UsageError
    from robcli.mixing.mixed import check_alpha
    from robcli.mixing.run import build_fixed_mixture
    from robcli.utils.parse import parse_float_expr

    h = _members(core, robust)
    if export is None:
        raise UsageError("--mix needs --export RUN (the run directory of the mixture)")
    a = check_alpha(parse_float_expr(mix, "--mix"), "--mix")
    _refuse_existing(export, force)
    build_fixed_mixture(core, h, a, export, mix_space=mix_space, scale_g=scale_g, scale_h=scale_h)
    return a


def sweep_mixtures(core: str, robust: list[str], *, dataset: str | None, eps: str | None, out: str | None = None,
                   export: str | None = None, norm: str | None = None, mix_grid=None, steps: int | None = None,
                   mix_space: str = "prob", scale_g: float = 1.0, scale_h: float = 1.0, split: str = "test",
                   n_ex: int | None = None, skip: int = 0, batch: int = 256, data_dir: str | None = None,
                   image_size: int | None = None, device: str = "auto", seed: int = 0, force: bool = False,
                   command=None):
    """Natural and STD/ROB/MIX-attacked accuracy of the fixed-alpha mixtures of ``core`` and ``robust`` over
    ``mix_grid`` (default 0, 0.1, ..., 1) at radius ``eps``: a DataFrame, one row per weight, also written as
    a compose table to ``out`` when given (:class:`MixSweep`). ``steps``: PGD steps of each attack (default 20);
    ``image_size``: default, the core run directory's."""
    from robcli.data.registry import load_split
    from robcli.errors import UsageError
    from robcli.mixing.mixed import check_alpha
    from robcli.mixing.run import DEFAULT_GRID, sweep_fixed_mixtures
    from robcli.tables.io import provenance, write_table
    from robcli.utils.device import resolve_device
    from robcli.utils.parse import parse_eps, parse_float_expr, parse_norm

    h = _members(core, robust)
    if export is not None:
        raise UsageError("--mix-sweep writes a table (--out T.parquet); to export one mixture use --mix A --export RUN")
    if dataset is None or eps is None:
        raise UsageError("--mix-sweep needs --dataset and --eps")
    nrm = parse_norm(norm or "Linf")
    e = parse_eps(eps, nrm)
    grid = [check_alpha(parse_float_expr(a, "--mix-grid"), "--mix-grid") for a in mix_grid] if mix_grid else list(DEFAULT_GRID)
    steps = 20 if steps is None else steps
    if steps < 1 or batch < 1:
        raise UsageError("--steps and --batch must be >= 1")
    if out is not None:
        _refuse_existing(out, force)
    dev = resolve_device(device)
    from robcli.models.card import image_size_for

    data = load_split(dataset, split, data_dir=data_dir, image_size=image_size_for(image_size, core)).select(
        n_ex=n_ex, skip=skip)
    table, df = sweep_fixed_mixtures(core, h, data, grid, eps=e, norm=nrm, steps=steps, mix_space=mix_space,
                                     scale_g=scale_g, scale_h=scale_h, batch=batch, device=dev)
    config = {"core": core, "robust": h, "alphas": grid, "eps": e, "norm": nrm, "steps": steps,
              "mix_space": mix_space, "scale_g": scale_g, "scale_h": scale_h, "dataset": dataset, "split": split,
              "n_ex": n_ex, "skip": skip}
    prov = provenance(seed=seed, device=dev, models=[core, h], data=data.fingerprint(), command=list(command or []))
    if out is not None:
        write_table(table, out, "compose", config=config, prov=prov)
    return MixSweep(table=table, df=df, config=config, prov=prov)


@dataclass
class MixSweep:
    """What :func:`sweep_mixtures` computed: ``table`` the compose table's rows (written to ``out`` with
    ``config`` and ``prov``), ``df`` the sweep itself (:data:`SWEEP_COLUMNS`, one row per weight)."""

    table: object
    df: object
    config: dict
    prov: dict


__all__ = ["SWEEP_COLUMNS", "MixSweep", "export_mixture", "sweep_mixtures"]
