"""robcli from Python (a notebook, a script): the commands' work as functions that return data.

Every function takes what the command takes, with the same checks (the same configuration objects and
validators), plus in-memory objects: a ``torch.nn.Module`` where a command takes ``--model``, tensors ``(x, y)``
or a ``torch.utils.data.Dataset`` where it takes ``--dataset``, and a table (a DataFrame returned here) where
it takes a table path. Tables come back as a :class:`pandas.DataFrame` whose ``.attrs`` hold the table's
metadata, exactly as robcli writes it into the Parquet file (``attrs["table"]`` the kind, ``attrs["config"]``,
``attrs["models"]``, ``attrs["data"]``, ...); ``out=PATH`` also writes the table, byte-for-byte what the command
writes. Mistakes raise robcli's typed errors (:mod:`robcli.errors`: ``UsageError``, ``DataError``,
``ModelError``, ``TableError``); nothing here exits the process or prints.

    >>> import robcli.api as rc
    >>> cert = rc.certify("runs/noise", "gaussians", sigma=[0.12, 0.25], N=1000, n_ex=100)
    >>> rc.report(cert, radii=[0, 0.25])["certified"]            # certified accuracy at radii, with its bound
    >>> part = rc.partition(cert, radius=0.25)                    # the four splits per example
    >>> part["split"].value_counts()

The jobs: :func:`finetune` (a run directory), :func:`attack`, :func:`certify`, :func:`partition`,
:func:`compose` (tables), :func:`report` (its tables as frames); :func:`import_cohen_log` and :func:`read`
read tables. The same functions are reachable as ``robcli.attack`` etc. after ``import robcli``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from robcli.errors import DataError, TableError, UsageError

__all__ = ["attack", "certify", "compose", "finetune", "import_cohen_log", "partition", "read", "report"]


# ---------------------------------------------------------------- tables <-> frames --------------------------


def _frame(table) -> Any:
    """A :class:`robcli.tables.io.Table` as a DataFrame with the metadata in ``.attrs``."""
    df = table.df.copy()
    df.attrs = {**table.meta, "table": table.kind, "path": table.path or None}
    return df


def read(path: str | Path):
    """Read a robcli table (a Parquet file or a folder of shards) as a DataFrame with its metadata in ``.attrs``.

    Raises:
        TableError: missing, unreadable or not a robcli table (a Cohen-format log: see :func:`import_cohen_log`).
    """
    from robcli.tables.io import read_table

    return _frame(read_table(path))


def _table(obj, kinds: tuple[str, ...] | None = None):
    """A path or a DataFrame from this module as a :class:`robcli.tables.io.Table` of one of ``kinds``."""
    import pandas as pd

    from robcli.tables.io import Table, read_table

    if isinstance(obj, (str, Path)):
        return read_table(obj, kinds)
    if isinstance(obj, pd.DataFrame):
        kind = obj.attrs.get("table")
        if not kind:
            raise TableError("this DataFrame carries no robcli table metadata (.attrs['table']): pass a table "
                             "returned by robcli.api or read with robcli.api.read")
        if kinds is not None and kind not in kinds:
            raise TableError(f"expected a {' or '.join(kinds)} table, got a {kind} table")
        meta = {k: v for k, v in obj.attrs.items() if k != "path"}
        return Table(df=obj, kind=kind, meta=meta, path=str(obj.attrs.get("path") or f"<{kind} table>"))
    raise UsageError(f"expected a table path or a DataFrame from robcli.api, got {type(obj).__name__}")


def _written(df, kind: str, *, config: dict, prov: dict, out: str | Path | None, force: bool):
    """Write through robcli's table writer (the schema's checks, the metadata) and read the result back."""
    from robcli.tables.io import read_table, write_table

    if out is not None:
        p = Path(out)
        if p.suffix != ".parquet":
            raise UsageError(f"out={out}: give a file name ending in .parquet")
        if p.exists() and not force:
            raise UsageError(f"{p} exists; pass force=True to overwrite")
        write_table(df, p, kind, config=config, prov=prov)
        return _frame(read_table(p, kind))
    with tempfile.TemporaryDirectory() as d:
        t = read_table(write_table(df, Path(d) / f"{kind}.parquet", kind, config=config, prov=prov), kind)
        t.path = ""
        return _frame(t)


# ---------------------------------------------------------------- data and models ----------------------------


def _tensor_data(x, y, *, num_classes: int | None, name: str, source: dict):
    import torch

    from robcli.data.registry import DataInfo, SplitData

    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DataError(f"data: x must be (N, ...) and y (N,) with the same N; got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise DataError("data: no examples")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"data: labels must be integers, got {y.dtype}")
    y = y.to(torch.int64)
    if x.dtype != torch.uint8:
        x = x.to(torch.float32)
        if not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > 1:
            raise DataError("data: inputs must be finite and in [0, 1] (robcli adds noise and attacks in pixel space; "
                            "the model normalizes its own inputs)")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise DataError(f"data: labels must lie in 0..{k - 1}")
    shape = tuple(int(s) for s in x.shape[1:])
    info = DataInfo(name=name, num_classes=k, input_shape=shape, class_names=tuple(str(i) for i in range(k)),
                    is_image=len(shape) == 3)
    return SplitData(info, "test", x, y, torch.arange(len(y), dtype=torch.int64), dict(source))


def _data(data, *, split: str, n_ex: int | None, skip: int, data_dir, image_size, num_classes, model,
          subset=None):
    """``data`` (a data set name, ``(x, y)`` tensors, a ``torch.utils.data.Dataset`` or a ``SplitData``) as a
    selected :class:`robcli.data.registry.SplitData`; its name for the metadata (None for in-memory data)."""
    import torch

    from robcli.data.registry import SplitData, load_split

    if isinstance(data, str):
        from robcli.models.card import image_size_for

        d = load_split(data, split, data_dir=data_dir,
                       image_size=image_size_for(image_size, model if isinstance(model, str) else None))
        return d.select(n_ex=n_ex, skip=skip, subset=subset), data
    if isinstance(data, SplitData):
        d = data
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        d = _tensor_data(data[0], data[1], num_classes=num_classes, name="tensors", source={"in_memory": True})
    elif isinstance(data, torch.utils.data.Dataset):
        try:
            items = [data[i] for i in range(len(data))]
        except TypeError:
            raise DataError("data: a Dataset must have a length and give (input, label) pairs by index") from None
        if not items:
            raise DataError("data: the Dataset is empty")
        xs = torch.stack([torch.as_tensor(it[0]) for it in items])
        ys = torch.as_tensor([int(it[1]) for it in items])
        d = _tensor_data(xs, ys, num_classes=num_classes, name=type(data).__name__, source={"in_memory": True})
    else:
        raise UsageError(f"data: give a data set name, (x, y) tensors or a torch Dataset, not {type(data).__name__}")
    return d.select(n_ex=n_ex, skip=skip, subset=subset), None


def _model(model, *, data_info, seed: int, arch, num_classes, input_shape):
    """(nn.Module in eval mode, model files for the provenance, the ``--model`` string or None)."""
    import torch

    if isinstance(model, torch.nn.Module):
        return model.eval(), [], None
    if isinstance(model, (str, Path)):
        from robcli.models import load_model

        lm = load_model(str(model), arch=arch, dataset_info=data_info, seed=seed, num_classes=num_classes,
                        input_shape=input_shape)
        return lm.model, lm.files or [], str(model)
    raise UsageError(f"model: give a run directory, a checkpoint, a registered architecture or a torch.nn.Module, "
                     f"not {type(model).__name__}")


def _numbers(value, name: str) -> tuple[float, ...]:
    """One number or several, each a float or an expression as the flags take them (``"0.25"``, ``"8/255"``)."""
    from robcli.utils.parse import parse_float_expr

    vals = [value] if isinstance(value, (int, float, str)) else list(value)
    return tuple(float(v) if isinstance(v, (int, float)) else parse_float_expr(str(v), name) for v in vals)


def _module_entry(module) -> dict:
    from robcli.utils.hashing import tensor_fingerprint

    state = module.state_dict()
    return {"path": f"<in-memory {type(module).__name__}>",
            "sha256": tensor_fingerprint(*(state[k] for k in sorted(state))) if state else None}


# ---------------------------------------------------------------- the jobs -----------------------------------


def certify(
    model,
    data,
    *,
    sigma: float | str | Sequence[float | str] | None = None,
    N0: int = 100,
    N: int = 100_000,
    alpha: float = 0.001,
    mode: str = "certify",
    batch: int = 1000,
    split: str = "test",
    n_ex: int | None = None,
    skip: int = 0,
    arch: str | None = None,
    num_classes: int | None = None,
    input_shape: str | None = None,
    data_dir: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    sequential: bool = False,
    radius: float | Sequence[float] | None = None,
    against: str = "prediction",
    radius_tol: float | None = None,
    method: str = "cohen",
    mix: float | None = None,
    lipschitz: float | None = None,
    eps: float | str | None = None,
    norm: str | None = None,
    scale_h: float | None = None,
    out: str | Path | None = None,
    force: bool = False,
    progress=None,
):
    """``robcli certify``: Cohen et al.'s CERTIFY (or PREDICT) per example and sigma, as a certify table;
    ``sequential=True`` the anytime-valid test (``--sequential``); ``method="mix-..."`` a fixed-alpha mixture's
    certificate (``--method``).

    Args:
        model: a run directory, checkpoint, TorchScript/.pt2 file or registered architecture (as ``--model``),
            or a ``torch.nn.Module`` mapping [0,1] inputs to logits.
        data: a registered data set name (``split``, ``data_dir``, ``image_size`` apply), ``(x, y)`` tensors
            (x in [0,1], y integer labels; ``num_classes`` defaults to ``max(y) + 1``) or a
            ``torch.utils.data.Dataset`` of (input, label) pairs.
        sigma: one noise level or several (a row per example and sigma); default 0.12 (mixture certificates
            that smooth need it given).
        N0, N, alpha, mode, batch, seed, device, precision, n_ex, skip, arch, num_classes, input_shape: as the
            flags.
        sequential, radius, against, radius_tol: the sequential test (``radius``: target radii; None: the
            adaptive mode).
        method, mix, lipschitz, eps, norm, scale_h: a mixture certificate (``mix-smoothed-h``,
            ``mix-lipschitz-rs``, ``mix-lipschitz``, ``mix-local-estimate``) of the mixture run directory
            ``model`` (or of the robust model ``model`` at weight ``mix``), on a data set name, through the same
            resumable table run as the command.
        out: also write the table there (``.parquet``; ``force`` to overwrite).
        progress: optional ``progress(done, total, desc)``.

    Returns:
        The certify table (``idx label predict radius correct sigma N0 N alpha nA pA_lower time mode``...), with
        its metadata in ``.attrs``. For names and paths it equals what ``robcli certify`` writes.

    Raises:
        UsageError, DataError, ModelError: as the command (bad parameters, unknown names, non-finite logits).
    """
    from robcli.certify.smoothing import CertifyConfig, run_certify
    from robcli.models.precision import in_precision
    from robcli.tables.io import provenance
    from robcli.utils.device import check_precision, resolve_device

    smoothing_given = sigma is not None
    sigmas = _numbers(0.12 if sigma is None else sigma, "sigma")
    if str(method).strip().lower() != "cohen":
        return _certify_mixture(model, data, method=method, sigmas=sigmas if smoothing_given else None, mix=mix, lipschitz=lipschitz, eps=eps,
                                norm=norm, scale_h=scale_h, N0=N0, N=N, alpha=alpha, batch=batch, split=split,
                                n_ex=n_ex, skip=skip, data_dir=data_dir, seed=seed, device=device, out=out,
                                force=force, progress=progress, unused={
                                    "sequential": sequential or None, "radius": radius, "arch": arch,
                                    "num_classes": num_classes, "input_shape": input_shape, "image_size": image_size,
                                    "precision": None if precision == "fp32" else precision,
                                    "mode": None if mode == "certify" else mode})
    bad = [k for k, v in dict(mix=mix, lipschitz=lipschitz, eps=eps, norm=norm, scale_h=scale_h).items()
           if v is not None]
    if bad:
        raise UsageError(f"{bad[0]} does not apply to method='cohen' (it belongs to the mixture certificates)")
    dev = resolve_device(device)
    d, dname = _data(data, split=split, n_ex=n_ex, skip=skip, data_dir=data_dir, image_size=image_size,
                     num_classes=num_classes, model=model)
    net, files, mname = _model(model, data_info=d.info, seed=seed, arch=arch, num_classes=num_classes,
                               input_shape=input_shape)
    extra = {"model": mname, "arch": arch, "dataset": dname, "split": split, "n_ex": n_ex, "skip": skip,
             "device_type": dev.type}
    if sequential:
        from robcli.certify.sequential import SequentialConfig, run_sequential

        radii = () if radius is None else _numbers(radius, "radius")
        cfg = SequentialConfig(sigmas=sigmas, radii=radii, against=against, radius_tol=radius_tol, N0=N0, N=N,
                               alpha=alpha, batch=batch, mode=str(mode).strip().lower(), seed=seed,
                               precision=precision, extra=extra)
        runner = run_sequential
    else:
        if radius is not None or radius_tol is not None or against != "prediction":
            raise UsageError("radius, radius_tol and against belong to sequential=True (fixed-N CERTIFY certifies "
                             "its own prediction and reports each example's radius)")
        cfg = CertifyConfig(sigmas=sigmas, N0=N0, N=N, alpha=alpha, batch=batch, mode=str(mode).strip().lower(),
                            seed=seed, precision=precision, extra=extra)
        runner = run_certify
    prov = provenance(seed=seed, device=dev, models=files, data=d.fingerprint(), command=None)
    if mname is None:
        prov["models"] = [_module_entry(net)]
    check_precision(cfg.precision, dev)
    df = runner(in_precision(net, cfg.precision), d, cfg, device=dev, progress=progress)
    return _written(df, "certify", config=cfg.as_dict(), prov=prov, out=out, force=force)


def _certify_mixture(model, data, *, method, sigmas, mix, lipschitz, eps, norm, scale_h, N0, N, alpha, batch, split,
                     n_ex, skip, data_dir, seed, device, out, force, progress, unused):
    """:func:`certify` with ``method="mix-..."``: robcli.mixing.certify.certify_mixture_table (a temporary
    ``out`` when none is given)."""
    from robcli.mixing.certify import (
        SMOOTHED,
        MixCertifyConfig,
        certify_mixture_table,
        check_method,
        refused_params,
    )
    from robcli.utils.parse import parse_eps, parse_norm

    m = check_method(method)
    smoothed = m in SMOOTHED
    params = {"sigma": sigmas, "lipschitz": lipschitz, "eps": eps, "norm": norm}
    unused = {**unused, **{p: params[p] for p in refused_params(m)}}
    bad = [k for k, v in unused.items() if v is not None]
    if bad:
        raise UsageError(f"{bad[0]} does not apply to method={m!r}")
    if smoothed and sigmas is None:
        raise UsageError(f"method={m!r} needs sigma (the smoothing noise of h)")
    if not isinstance(model, (str, Path)) or not isinstance(data, str):
        raise UsageError(f"method={m!r} certifies a mixture run directory (or robust model) given as a path, on a "
                         "data set given by name")
    if smoothed and len(sigmas) > 1:
        raise UsageError(f"method={m!r} takes one sigma")
    nrm = parse_norm(norm or "L2")
    cfg = MixCertifyConfig(method=m, sigma=sigmas[0] if smoothed else None, lipschitz=lipschitz,
                           eps=parse_eps(str(eps), nrm) if eps is not None else None, norm=nrm, n0=N0, n=N,
                           alpha=alpha, batch=batch, seed=seed)
    if out is not None and Path(out).exists() and not force:
        raise UsageError(f"{out} exists; pass force=True to overwrite")
    with tempfile.TemporaryDirectory() as d:
        dest = Path(out) if out is not None else Path(d) / "certify.parquet"
        from robcli.distributed import World

        certify_mixture_table(cfg, model=str(model), dataset=data, out=dest, mix=mix, scale_h=scale_h, split=split,
                              n_ex=n_ex, skip=skip, data_dir=data_dir, device=device, force=force,
                              world=World(), progress=progress)  # one process, as every API job
        frame = read(dest)
        if out is None:
            frame.attrs["path"] = None
        return frame


def attack(
    model,
    data,
    *,
    attack: str = "apgd-ce",
    eps: float | str | Sequence[float | str] = "8/255",
    norm: str = "Linf",
    steps: int | None = None,
    restarts: int | None = None,
    version: str = "standard",
    aa_attacks: Sequence[str] = (),
    objective: str = "margin",
    grid_points: int | None = None,
    mix_min: float | None = None,
    mix_max: float | None = None,
    mix_attack_weight: float | None = None,
    n_targets: int | None = None,
    n_queries: int | None = None,
    batch: int = 256,
    split: str = "test",
    n_ex: int | None = None,
    skip: int = 0,
    subset: Sequence[int] | str | Path | None = None,
    subset_split: str | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    input_shape: str | None = None,
    data_dir: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    precision: str = "fp32",
    out: str | Path | None = None,
    force: bool = False,
    progress=None,
):
    """``robcli attack``: per-example robustness at every radius of ``eps`` (ascending; an example found
    non-robust at a smaller radius is not attacked again), as an attack table.

    Args:
        model: as ``--model`` (a run directory, checkpoint, TorchScript/.pt2 file, registered architecture; a
            mixture run directory for ``attack="mix-a"`` .. ``"mix-d"``) or a ``torch.nn.Module`` mapping [0,1]
            inputs to logits.
        data: a data set name, ``(x, y)`` tensors or a ``torch.utils.data.Dataset`` (see :func:`certify`).
        attack, eps, norm, steps, restarts, version, aa_attacks, objective, grid_points, mix_min, mix_max,
            mix_attack_weight, n_targets, n_queries, batch, seed, device, precision: as the flags (the same
            :class:`robcli.attacks.engine.AttackConfig` checks them; ``batch`` is part of the seeding).
        subset: only these example indices, or (as ``--subset``) an index file or a partition table with
            ``subset_split``.
        out: also write the table there (``.parquet``; ``force`` to overwrite).
        progress: optional ``progress(done, total, desc)``.

    Returns:
        The attack table (``idx label clean_pred eps norm attack robust adv_pred``...), metadata in ``.attrs``
        (``attrs["notes"]``: pyautoattack's warnings). For names and paths it equals what ``robcli attack``
        writes.

    Raises:
        UsageError, DataError, ModelError, NonFiniteOutput: as the command.
    """
    from robcli.attacks.engine import AttackConfig, run_attack
    from robcli.models.precision import in_precision
    from robcli.tables.io import provenance
    from robcli.utils.device import check_precision, resolve_device

    eps_t = (eps,) if isinstance(eps, (int, float, str)) else tuple(eps)
    mname = str(model) if isinstance(model, (str, Path)) else None
    subset_file = None
    if isinstance(subset, (str, Path)):  # an index file or a partition table, as --subset
        from robcli.attacks.table import read_subset

        if not isinstance(data, str):
            raise UsageError("subset as a file: give the data set by name (the file names its data set and split)")
        subset_file, subset = str(subset), read_subset(str(subset), subset_split, data, split)
    elif subset_split is not None:
        raise UsageError("subset_split applies to a partition table given as subset")
    sub = None if subset is None else [int(i) for i in subset]
    aa = tuple(a for a in aa_attacks.split(",")) if isinstance(aa_attacks, str) else tuple(aa_attacks)
    cfg = AttackConfig(
        attack=attack, eps=eps_t, norm=norm, steps=steps, restarts=restarts, version=version,
        aa_attacks=aa, objective=objective, grid_points=grid_points, mix_min=mix_min, mix_max=mix_max,
        mix_attack_weight=mix_attack_weight, n_targets=n_targets, n_queries=n_queries, batch=batch, seed=seed,
        precision=precision, extra={"model": mname, "arch": arch, "dataset": data if isinstance(data, str) else None, "split": split,
               "n_ex": n_ex, "skip": skip, "subset": subset_file, "subset_split": subset_split,
               "image_size": image_size})
    spec = cfg.spec
    if spec.load is not None and mname is None:
        raise UsageError(f"attack {cfg.attack} attacks a mixture: give its run directory (a path), not an object")
    if spec.load is not None and (arch, num_classes, input_shape) != (None, None, None):
        raise UsageError(f"arch, num_classes and input_shape do not apply to attack {cfg.attack} (a mixture run "
                         "directory knows its members)")
    if spec.model_check is not None:
        spec.model_check(cfg, mname)
    dev = resolve_device(device)
    check_precision(cfg.precision, dev)
    d, _ = _data(data, split=split, n_ex=n_ex, skip=skip, data_dir=data_dir, image_size=image_size,
                 num_classes=num_classes, model=model, subset=sub)
    if spec.load is not None:
        lm = spec.load(cfg, mname, d.info, dev)
        net, files = lm.model, lm.files or []
    else:
        net, files, _ = _model(model, data_info=d.info, seed=seed, arch=arch, num_classes=num_classes,
                               input_shape=input_shape)
    prov = provenance(seed=seed, device=dev, models=files, data=d.fingerprint(), command=None)
    if mname is None:
        prov["models"] = [_module_entry(net)]
    notes: list[str] = []
    df = run_attack(in_precision(net, cfg.precision), d, cfg, device=dev, progress=progress, notes=notes)
    res = _written(df, "attack", config=cfg.as_dict(), prov=prov, out=out, force=force)
    res.attrs["notes"] = list(dict.fromkeys(notes))
    return res


def _spec(obj):
    """One model's table(s) for :func:`compose`: a path (``"A.parquet,B.parquet"`` allowed), a DataFrame from
    this module, or a tuple of those (its eps and 2*eps tables) -> what compose_tables reads."""
    if isinstance(obj, (str, Path)):
        return str(obj)
    if isinstance(obj, tuple):
        return tuple(_table(o, ("attack", "certify")) for o in obj)
    return _table(obj, ("attack", "certify"))


def compose(
    robust,
    core,
    *,
    eps: float | str | None = None,
    selector: str = "ri",
    threshold: Sequence[float] | None = None,
    sweep: bool = False,
    norm: str | None = None,
    sigma: float | None = None,
    selection_check: str = "2eps",
    robust_model: str | Sequence[str] | None = None,
    core_model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    export: str | Path | None = None,
    export_threshold: Sequence[float] | None = None,
    export_inner_attack: str | None = None,
    export_inner_steps: int | None = None,
    export_inner_restarts: int | None = None,
    steps: int | None = None,
    mix: float | str | None = None,
    mix_sweep: bool = False,
    mix_grid: Sequence[float] | None = None,
    mix_space: str = "prob",
    scale_g: float = 1.0,
    scale_h: float = 1.0,
    split: str = "test",
    n_ex: int | None = None,
    skip: int = 0,
    batch: int = 256,
    device: str = "auto",
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
):
    """``robcli compose``: a robust model + selector + core model evaluated from their tables (paper eq. 15,
    with the soundness rule of :mod:`robcli.compose.selectors`), or, with ``mix``/``mix_sweep``, mixtures of
    two models.

    Args:
        robust: table compositions: the robust model's attack or certify table(s) -- a path (``"E.parquet,
            E2.parquet"`` for its eps and 2*eps tables), a DataFrame from this module, or a tuple of those for one
            model; a list of such for a cascade (tried in order). With ``mix``/``mix_sweep``: the robust MODEL
            h (a run directory).
        core: the core model's table at eps (path or DataFrame); with ``mix``/``mix_sweep`` the core MODEL g.
        eps, selector, threshold, sweep, norm, sigma, selection_check, robust_model, core_model, dataset, export,
            export_threshold, export_inner_*, steps: as the flags (``sweep``: ``--sweep``; export_inner_* of None:
            the command's defaults pgd, 20, 1).
        mix: write the fixed-alpha mixture with this weight on h to the run directory ``export``.
        mix_sweep, mix_grid, mix_space, scale_g, scale_h, split, n_ex, skip, batch: the alpha sweep of
            ``--mix-sweep`` (natural vs STD/ROB/MIX-attacked accuracy per weight).
        out: also write the compose table there.

    Returns:
        The compose table (one row per threshold or mixture weight) with its metadata in ``.attrs``; for
        ``mix`` the exported run directory (a :class:`~pathlib.Path`). For paths it equals the command's.

    Raises:
        UsageError, TableError, ModelError: as the command (tables of different examples or models, ...).
    """
    from robcli.compose.tables import compose_tables, write_composition

    members = list(robust) if isinstance(robust, list) else [robust]
    if mix is not None or mix_sweep:
        from robcli.compose.mixtures import export_mixture, sweep_mixtures

        if mix is not None and mix_sweep:
            raise UsageError("give mix=A (export one mixture) or mix_sweep=True (evaluate a mix_grid), not both")
        if not all(isinstance(m, (str, Path)) for m in [*members, core]):
            raise UsageError("mixtures are of MODELS: give core and robust as run directories")
        members = [str(m) for m in members]
        if mix is not None:
            if out is not None:
                raise UsageError("mix=A exports one mixture to export=RUN and writes no table (mix_sweep=True does)")
            export_mixture(str(core), members, str(mix), None if export is None else str(export), mix_space=mix_space,
                           scale_g=scale_g, scale_h=scale_h, force=force)
            return Path(export)
        res = sweep_mixtures(str(core), members, dataset=dataset, eps=None if eps is None else str(eps),
                            out=None if out is None else str(out), export=export, norm=norm,
                            mix_grid=None if mix_grid is None else [str(a) for a in mix_grid], steps=steps,
                            mix_space=mix_space, scale_g=scale_g, scale_h=scale_h, split=split, n_ex=n_ex, skip=skip,
                            batch=batch, data_dir=data_dir, device=device, seed=seed, force=force)
        return read(out) if out is not None else _written(res.table, "compose", config=res.config, prov=res.prov,
                                                          out=None, force=force)
    if eps is None:
        raise UsageError("compose needs eps (the threat radius of the composition)")
    rm = [robust_model] if isinstance(robust_model, (str, Path)) else robust_model
    comp = compose_tables(
        [_spec(m) for m in members], _spec(core), eps=str(eps), out=None if out is None else str(out),
        selector=selector, threshold=None if threshold is None else [str(t) for t in threshold], do_sweep=sweep,
        norm=norm, sigma=sigma, check=selection_check, robust_model=None if rm is None else [str(r) for r in rm],
        core_model=None if core_model is None else str(core_model), dataset=dataset, data_dir=data_dir,
        export=None if export is None else str(export),
        export_threshold=None if export_threshold is None else [str(t) for t in export_threshold],
        export_inner_attack="pgd" if export_inner_attack is None else export_inner_attack,
        export_inner_steps=20 if export_inner_steps is None else export_inner_steps,
        export_inner_restarts=1 if export_inner_restarts is None else export_inner_restarts,
        steps=50 if steps is None else steps, device=device, seed=seed, force=force, command=None,
        given=frozenset(f"--{k.replace('_', '-')}" for k, v in dict(
            export_inner_attack=export_inner_attack, export_inner_steps=export_inner_steps,
            export_inner_restarts=export_inner_restarts).items() if v is not None))
    if out is not None or comp.card is not None:
        write_composition(comp, None if out is None else str(out))
    if out is not None:
        return read(out)
    return _written(comp.df, "compose", config=comp.config, prov=comp.prov, out=None, force=force)


# the FinetuneConfig fields a user sets by keyword (the flags not in finetune's signature)
FINETUNE_OPTIONS = ("beta", "trades_beta", "era_adv", "era_steps", "detach_weight", "attack_steps", "augment", "sigma",
                    "num_noise", "temperature", "download")


def finetune(
    loss: str,
    out: str | Path,
    *,
    dataset: str = "gaussians",
    model: str | None = None,
    init: str | Path | None = None,
    arch: str | None = None,
    eps: float | str = 0,
    norm: str = "Linf",
    epochs: int | None = None,
    lr: float | str | None = None,
    lr_milestones: str | Sequence[float] | None = None,
    batch: int | None = None,
    momentum: float | None = None,
    weight_decay: float | None = None,
    train_subset: str | Path | Sequence[int] | None = None,
    data_dir: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    force: bool = False,
    tensorboard: str | Path | None = None,
    progress=None,
    **options,
) -> Path:
    """``robcli finetune``: train (``model``, an architecture) or fine-tune (``init``, a run directory or
    checkpoint) with ``loss`` (std, trades, era, dga, noise, cra) and write the run directory ``out``; with
    ``loss="mixnet"`` train the adaptive mixing network of ``core=``/``robust=`` run directories.

    Args:
        epochs, lr, lr_milestones, batch, momentum, weight_decay: None (the default) takes the data set's
            recommended value for the architecture, as a flag the user does not give (recorded in the card's
            ``defaults_from``).
        train_subset: an index file or a sequence of train-split indices.
        options: the other flags by their Python names: ``beta``, ``trades_beta``, ``era_adv``, ``era_steps``,
            ``detach_weight``, ``attack_steps``, ``augment``, ``sigma``, ``num_noise``, ``temperature``; for mixnet
            ``core``, ``robust``, ``train_attack``, ``blocks``, ``eps_low``, ``ema``, ``mix_min``, ``mix_max``, ...
            (:func:`robcli.mixing.run.finetune_mixnet`).
        progress: optional ``progress(done, total, desc)``.

    Returns:
        The run directory (a :class:`~pathlib.Path`): ``robcli.api.read(run / "train_log.parquet")`` gives the
        log, and every ``model`` argument here loads it.

    Data and the start model are names and paths here (a run directory records how to rebuild its
    architecture, which an arbitrary in-memory module cannot say); to fine-tune your own module, save its
    state dict as a checkpoint of a registered architecture and pass ``init=`` with ``arch=``.

    Raises:
        UsageError, DataError, ModelError: as the command; nothing is written then.
    """
    import torch

    if isinstance(init, torch.nn.Module) or isinstance(model, torch.nn.Module):
        raise UsageError("finetune takes the start model as a path or architecture name: save the module's "
                         "state_dict as a checkpoint of a registered architecture and pass init=PATH, arch=NAME")
    if not isinstance(dataset, str):
        raise UsageError("finetune takes a data set name (its train and val splits are read by name)")
    if loss == "mixnet":
        from robcli.mixing.run import finetune_mixnet

        bad = [k for k, v in dict(model=model, init=init, arch=arch, lr_milestones=lr_milestones, momentum=momentum,
                                  weight_decay=weight_decay, train_subset=train_subset, image_size=image_size,
                                  tensorboard=tensorboard).items() if v is not None]
        import inspect

        takes = set(inspect.signature(finetune_mixnet).parameters) - {"callback", "command"}
        bad += [k for k in options if k not in takes]
        if progress is not None:
            bad.append("progress")
        if bad or resume:
            raise UsageError(f"{(bad or ['resume'])[0]} does not apply to loss='mixnet' (it trains a mixing network "
                             "on core=/robust=)")
        return finetune_mixnet(options.pop("core", None), options.pop("robust", None), dataset=dataset, out=out,
                               eps=eps, norm=norm, data_dir=data_dir, epochs=epochs, batch=batch, lr=lr, seed=seed,
                               device=device, force=force, **options)
    from robcli.train.config import finetune_config
    from robcli.train.loop import finetune as run_finetune

    unknown = sorted(set(options) - set(FINETUNE_OPTIONS))
    if unknown:
        raise UsageError(f"finetune: unknown option {unknown[0]!r}; options: {', '.join(FINETUNE_OPTIONS)}")

    cfg = finetune_config(loss=loss, dataset=dataset, out=out, eps=eps, norm=norm, lr=lr, lr_milestones=lr_milestones,
                          train_subset=train_subset, model=model, init=None if init is None else str(init), arch=arch,
                          epochs=epochs, batch=batch, momentum=momentum, weight_decay=weight_decay,
                          data_dir=data_dir, image_size=image_size, seed=seed, device=device, **options)
    return Path(run_finetune(cfg, progress, resume=resume, force=force, tensorboard=tensorboard).run_dir)


def import_cohen_log(log: str | Path, *, sigma: float, N: int = 100_000, N0: int = 100, alpha: float = 0.001,
                     dataset: str | None = None, split: str | None = None, out: str | Path | None = None,
                     force: bool = False):
    """``robcli certify --import LOG``: a Cohen et al. certification log as a certify table (see
    :mod:`robcli.tables.cohen`: declared parameters and the log's sha256 recorded, ``pA_lower`` reconstructed,
    ``nA`` empty, rows marked ``imported``).

    Raises:
        UsageError: parameters out of range. TableError: a malformed log (naming the line).
    """
    from robcli.tables.cohen import read_cohen_log

    lg = read_cohen_log(log, sigma=sigma, N=N, N0=N0, alpha=alpha, dataset=dataset, split=split)
    return _written(lg.df, "certify", config=lg.config, prov=lg.prov, out=out, force=force)


def partition(table, *, eps: float | str | None = None, radius: float | str | None = None,
              sigma: float | None = None, attack: str | None = None, norm: str | None = None,
              out: str | Path | None = None, force: bool = False):
    """``robcli partition``: every example of an attack or certify table in one of the four splits
    (robust/non-robust x accurate/inaccurate).

    Args:
        table: an attack or certify table (path or DataFrame from this module).
        eps: attack tables: the threat radius (needed when the table holds several; ``"8/255"`` accepted).
        radius: certify tables: robust means certified radius >= this (``eps`` accepted as a synonym).
        sigma, attack, norm: as the flags.
        out: also write the partition table there.

    Returns:
        The partition table (``idx label split``), metadata in ``.attrs``; ``.attrs["summary"]`` holds the
        Table 8-style split sizes.

    Raises:
        UsageError, TableError: as the command.
    """
    from robcli.analysis.partition import partition_frame, partition_view, split_summary
    from robcli.tables.io import provenance

    t = _table(table, ("attack", "certify"))
    view = partition_view(t, eps=eps, radius=radius, sigma=sigma, attack=attack, norm=norm, flag="")
    part = partition_frame(view)
    summary = split_summary(part)
    config = {"table": t.path, "eps": view.eps, "norm": view.norm, "kind": t.kind, "attacks": list(view.attacks),
              "sigma": sigma, "out": None if out is None else str(out), "export_split": None, "export": None}
    prov = provenance(data=t.meta.get("data"), command=None)
    prov["models"] = t.meta.get("models") or []
    df = _written(part, "partition", config=config, prov=prov, out=out, force=force)
    df.attrs["summary"] = summary
    return df


# report section titles -> short keys
_SECTION_KEYS = (("(Table 1)", "attack"), ("(Tables 8-9)", "partition"), ("(Tables 4/6)", "compose"),
                 ("(Tables 2/3)", "certified"), ("(Table 3)", "certified_selector"),
                 ("confidence statement", "certified_bound"), ("Training runs", "training"), ("Pareto", "pareto"))


def report(*tables, radii: Sequence[float] | None = None, rho: float = 0.001, pareto: str | None = None) -> dict:
    """``robcli report``'s tables as DataFrames.

    Args:
        tables: tables (paths, shard folders, run dirs or DataFrames from this module).
        radii: radii of the certified-accuracy tables (default as the command: 0, 0.12, 0.25, 0.5, 0.75, 1).
        rho: the certified accuracy's confidence statement holds with probability >= 1 - rho.
        pareto: ``"X,Y"``: add the Pareto front on two metrics.

    Returns:
        ``{key: DataFrame}``, keys among ``attack`` (Table 1), ``partition``, ``compose``, ``certified``
        (acc@r, inacc@r), ``certified_selector`` (sel@r, selacc@r), ``certified_bound`` (acc_lb@r), ``training``
        and ``pareto``; each frame's ``.attrs`` has the section's ``title`` and ``note``.

    Raises:
        UsageError, TableError: as the command (including "no tables to report on").
    """
    import pandas as pd

    from robcli.analysis.pareto import parse_metrics
    from robcli.report.build import DEFAULT_RADII, build_report, collect

    if not tables:
        raise UsageError("no tables to report on")
    if radii is not None and any(float(r) < 0 for r in radii):
        raise UsageError("radii must be >= 0")
    read = []
    for t in tables:
        read += collect([t]) if isinstance(t, (str, Path)) else [_table(t)]
    rep = build_report(read, radii=tuple(float(r) for r in radii) if radii is not None else DEFAULT_RADII,
                       pareto=parse_metrics(pareto) if pareto is not None else None, rho=rho)
    if not rep.sections:
        raise UsageError("no tables to report on")
    out: dict[str, pd.DataFrame] = {}
    for s in rep.sections:
        key = next((k for needle, k in _SECTION_KEYS if needle in s.title), s.title)
        df = s.df.copy()
        df.attrs = {"title": s.title, "note": getattr(s, "note", "")}
        out[key] = df
    return out
