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

Covered so far: :func:`certify`, :func:`import_cohen_log`, :func:`partition`, :func:`report`, :func:`read`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from robcli.errors import DataError, TableError, UsageError

__all__ = ["certify", "import_cohen_log", "partition", "read", "report"]


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


def _data(data, *, split: str, n_ex: int | None, skip: int, data_dir, image_size, num_classes, model):
    """``data`` (a data set name, ``(x, y)`` tensors, a ``torch.utils.data.Dataset`` or a ``SplitData``) as a
    selected :class:`robcli.data.registry.SplitData`; its name for the metadata (None for in-memory data)."""
    import torch

    from robcli.data.registry import SplitData, load_split

    if isinstance(data, str):
        from robcli.cli.common import image_size_for

        d = load_split(data, split, data_dir=data_dir,
                       image_size=image_size_for(image_size, model if isinstance(model, str) else None))
        return d.select(n_ex=n_ex, skip=skip), data
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
    return d.select(n_ex=n_ex, skip=skip), None


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
    sigma: float | Sequence[float] = 0.12,
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
    out: str | Path | None = None,
    force: bool = False,
    progress=None,
):
    """``robcli certify``: Cohen et al.'s CERTIFY (or PREDICT) per example and sigma, as a certify table.

    Args:
        model: a run directory, checkpoint, TorchScript/.pt2 file or registered architecture (as ``--model``),
            or a ``torch.nn.Module`` mapping [0,1] inputs to logits.
        data: a registered data set name (``split``, ``data_dir``, ``image_size`` apply), ``(x, y)`` tensors
            (x in [0,1], y integer labels; ``num_classes`` defaults to ``max(y) + 1``) or a
            ``torch.utils.data.Dataset`` of (input, label) pairs.
        sigma: one noise level or several (a row per example and sigma).
        N0, N, alpha, mode, batch, seed, device, n_ex, skip, arch, num_classes, input_shape: as the flags.
        out: also write the table there (``.parquet``; ``force`` to overwrite).
        progress: optional ``progress(done, total, desc)``.

    Returns:
        The certify table (``idx label predict radius correct sigma N0 N alpha nA pA_lower time mode``...), with
        its metadata in ``.attrs``. For names and paths it equals what ``robcli certify`` writes.

    Raises:
        UsageError, DataError, ModelError: as the command (bad parameters, unknown names, non-finite logits).
    """
    from robcli.certify.smoothing import CertifyConfig, run_certify
    from robcli.tables.io import provenance
    from robcli.utils.device import resolve_device

    sigmas = (float(sigma),) if isinstance(sigma, (int, float)) else tuple(float(s) for s in sigma)
    dev = resolve_device(device)
    d, dname = _data(data, split=split, n_ex=n_ex, skip=skip, data_dir=data_dir, image_size=image_size,
                     num_classes=num_classes, model=model)
    net, files, mname = _model(model, data_info=d.info, seed=seed, arch=arch, num_classes=num_classes,
                               input_shape=input_shape)
    cfg = CertifyConfig(sigmas=sigmas, N0=N0, N=N, alpha=alpha, batch=batch, mode=str(mode).strip().lower(),
                        seed=seed, extra={"model": mname, "arch": arch, "dataset": dname, "split": split,
                                          "n_ex": n_ex, "skip": skip, "device_type": dev.type})
    prov = provenance(seed=seed, device=dev, models=files, data=d.fingerprint(), command=None)
    if mname is None:
        prov["models"] = [_module_entry(net)]
    df = run_certify(net, d, cfg, device=dev, progress=progress)
    return _written(df, "certify", config=cfg.as_dict(), prov=prov, out=out, force=force)


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
