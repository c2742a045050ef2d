"""Cohen et al.'s certification logs in and out (the format of locuslab/smoothing and the code built on it).

The format: a tab-separated text file, one file per model and sigma, with the header
``idx label predict radius correct time`` and one row per example (``code/certify.py``)::

    idx	label	predict	radius	correct	time
    0	3	3	0.378	1	15.4
    20	7	-1	0.0	0	15.6

``predict = -1`` is an abstention (radius 0); ``correct`` is ``int(predict == label)``; ``radius`` is the
certified L2 radius ``sigma * Phi^-1(pA_lower)``, printed by the reference code with 3 significant digits
(``{:.3}``); ``time`` is seconds, either a number or ``str(datetime.timedelta)`` (``0:00:15.400000``). The log
does not record sigma, N, N0 or alpha: an import declares them and records them as provenance together with
the log's sha256.

Import (:func:`read_cohen_log`, :func:`import_cohen_log`) gives a certify table (``robcli.tables.schema``):

* ``pA_lower`` = ``Phi(radius / sigma)`` where the log did not abstain (the radius formula inverted; as precise as
  the log's rounding, and capped at ``alpha ** (1/N)``, the largest bound CERTIFY can return), and NaN where it
  abstained: the log only says that the bound was below 1/2, not by how much.
* ``nA`` is empty (null): the count cannot be recovered from a rounded radius.
* ``imported = True`` on every row, ``source_line`` the row's line in the log, ``mode = "certify"``; the table's
  config holds the declared parameters and ``imported_from`` (path, sha256, format, rows).

A malformed log is a :class:`~robcli.errors.TableError` naming the file and the line: a missing column, a
value that is not a number, a negative radius, a repeated idx, ``correct`` disagreeing with
``predict == label``, a positive radius on an abstention, an empty file, and a radius larger than CERTIFY can
return with the declared sigma, N and alpha (``sigma * Phi^-1(alpha ** (1/N))``, allowing for the printed
rounding): such a log was made with other parameters, and recording the declared ones would overstate its
confidence.

Export (:func:`cohen_log_text`, :func:`plan_cohen_export`) writes each (table, sigma) of robcli certify tables in
the same format (radii at full precision, so that nothing is rounded up into a larger certificate); tables made
with ``--mode predict`` are written in ``code/predict.py``'s format (``idx label predict correct time``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from robcli.errors import TableError, UsageError

FORMAT = "cohen-tsv"
from robcli.tables.io import is_cohen_log  # noqa: E402,F401  (the sniff lives beside the reader)

CERTIFY_HEADER = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_HEADER = ("idx", "label", "predict", "correct", "time")
ABSTAIN = -1
_TIMEDELTA = re.compile(r"^(?:(\d+) days?, )?(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)$")
# relative slack on top of the printed rounding when comparing a radius with the largest one possible
_REL_TOL = 1e-9


@dataclass
class CohenLog:
    """An imported log: the certify-table frame, the config and the provenance to write it with."""

    df: Any  # pandas DataFrame with the certify schema's columns (+ imported, source_line, mode)
    config: dict = field(default_factory=dict)
    prov: dict = field(default_factory=dict)
    path: str = ""


def max_radius(sigma: float, N: int, alpha: float) -> float:
    """The largest radius CERTIFY can return: ``sigma * Phi^-1(alpha ** (1/N))`` (all N votes on one class)."""
    from scipy.stats import norm

    return float(sigma * norm.ppf(alpha ** (1.0 / N)))


def _half_unit(token: str) -> float:
    """Half a unit in the last printed digit of ``token`` (the rounding the writer may have applied)."""
    try:
        exp = Decimal(token).as_tuple().exponent
    except InvalidOperation:  # pragma: no cover - the token parsed as a float already
        return 0.0
    return 0.5 * 10.0 ** int(exp) if isinstance(exp, int) else 0.0


def _parse_int(tok: str) -> int:
    if not re.fullmatch(r"[+-]?\d+", tok):
        raise ValueError
    return int(tok)


def _parse_float(tok: str) -> float:
    v = float(tok)  # ValueError on text
    if not math.isfinite(v):
        raise ValueError
    return v


def _parse_bool(tok: str) -> bool:
    t = tok.lower()
    if t in ("1", "true"):
        return True
    if t in ("0", "false"):
        return False
    raise ValueError


def _parse_time(tok: str) -> float:
    m = _TIMEDELTA.match(tok)
    if m:
        days, h, mi, s = m.groups()
        return int(days or 0) * 86400 + int(h) * 3600 + int(mi) * 60 + float(s)
    v = _parse_float(tok)
    if v < 0:
        raise ValueError
    return v


_PARSERS = {"idx": (_parse_int, "an integer"), "label": (_parse_int, "an integer"),
            "predict": (_parse_int, "an integer"), "radius": (_parse_float, "a finite number"),
            "correct": (_parse_bool, "0 or 1"), "time": (_parse_time, "seconds or H:MM:SS.ffffff")}


def read_cohen_log(
    path: str | Path,
    *,
    sigma: float,
    N: int = 100_000,
    N0: int = 100,
    alpha: float = 0.001,
    dataset: str | None = None,
    split: str | None = None,
    command: list[str] | None = None,
) -> CohenLog:
    """Parse and validate a Cohen-format certification log into a certify-table frame.

    Args:
        path: the log (any name; Cohen's are called e.g. ``sigma_0.25`` without an extension).
        sigma, N, N0, alpha: the parameters the log was certified with (the log does not record them).
        dataset, split: optionally, the data set and split it ran on (recorded in the table's data metadata).
        command: the command line to record.

    Raises:
        UsageError: sigma, N, N0 or alpha out of range (as for ``robcli certify``).
        TableError: an unreadable or malformed log (see the module docstring), naming the file and the line.
    """
    import numpy as np
    import pandas as pd
    from scipy.stats import norm

    from robcli.certify.bounds import check_params
    from robcli.utils.hashing import sha256_bytes

    sigma, N, N0, alpha = float(sigma), int(N), int(N0), float(alpha)
    check_params(sigma=sigma, alpha=alpha, n0=N0, n=N, mode="certify")
    p = Path(path)
    if not p.exists():
        raise TableError(f"{p} does not exist")
    if p.is_dir():
        raise TableError(f"{p} is a folder; give a Cohen-format log file")
    raw = p.read_bytes()
    if raw.startswith(b"PAR1"):
        raise TableError(f"{p} is a Parquet file, not a Cohen-format log (read it as a robcli table)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise TableError(f"{p} line {line}: not UTF-8 text; a Cohen-format log is tab-separated text") from None
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise TableError(f"{p} line 1: the file is empty (a Cohen-format log starts with the header "
                         f"{' '.join(CERTIFY_HEADER)})")
    header = [h.strip() for h in lines[0].rstrip("\r").split("\t")]
    missing = [c for c in CERTIFY_HEADER if c not in header]
    if missing:
        hint = (" (this is a PREDICT log, code/predict.py's format: it certifies no radius)"
                if missing == ["radius"] and all(c in header for c in PREDICT_HEADER) else
                " (tab-separated: idx label predict radius correct time)")
        raise TableError(f"{p} line 1: the header lacks column(s) {', '.join(missing)}{hint}")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise TableError(f"{p} line 1: the header repeats column(s) {', '.join(dup)}")
    pos = {c: header.index(c) for c in CERTIFY_HEADER}
    if len(lines) < 2:
        raise TableError(f"{p} line 2: no rows after the header")

    r_max = max_radius(sigma, N, alpha)
    p_max = alpha ** (1.0 / N)
    cols: dict[str, list] = {c: [] for c in CERTIFY_HEADER}
    src_line: list[int] = []
    seen: dict[int, int] = {}
    for ln, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            raise TableError(f"{p} line {ln}: empty line inside the log")
        fields = line.split("\t")
        if len(fields) != len(header):
            raise TableError(f"{p} line {ln}: {len(fields)} tab-separated field(s), the header has {len(header)}")
        vals = {}
        for c in CERTIFY_HEADER:
            tok = fields[pos[c]].strip()
            fn, what = _PARSERS[c]
            try:
                vals[c] = fn(tok)
            except (ValueError, OverflowError):
                raise TableError(f"{p} line {ln}: {c} {tok!r} is not {what}") from None
        i, y, pred, r = vals["idx"], vals["label"], vals["predict"], vals["radius"]
        if i in seen:
            raise TableError(f"{p} line {ln}: idx {i} repeats (first on line {seen[i]})")
        seen[i] = ln
        if y < 0:
            raise TableError(f"{p} line {ln}: label {y} is negative")
        if pred < ABSTAIN:
            raise TableError(f"{p} line {ln}: predict {pred} is neither a class (>= 0) nor -1 (abstain)")
        if r < 0:
            raise TableError(f"{p} line {ln}: radius {fields[pos['radius']].strip()} is negative")
        if pred == ABSTAIN and r > 0:
            raise TableError(f"{p} line {ln}: radius {fields[pos['radius']].strip()} on an abstention "
                             "(predict -1 certifies nothing: its radius is 0)")
        if vals["correct"] != (pred == y):
            raise TableError(f"{p} line {ln}: correct {fields[pos['correct']].strip()} disagrees with "
                             f"predict {pred} {'==' if pred == y else '!='} label {y}")
        tok_r = fields[pos["radius"]].strip()
        r_lo = max(0.0, r - _half_unit(tok_r))
        if r_lo > r_max * (1 + _REL_TOL):
            need = math.exp(min(0.0, N * float(norm.logcdf(r_lo / sigma))))
            raise TableError(
                f"{p} line {ln}: radius {tok_r} exceeds the largest radius CERTIFY can return with sigma={sigma:g}, "
                f"N={N}, alpha={alpha:g} ({r_max:.4g} = sigma * Phi^-1(alpha^(1/N))); the log was made with other "
                f"parameters (at N={N} it needs alpha >= {need:.2g}, or a larger N or sigma): declare the ones it "
                "was certified with")
        for c in CERTIFY_HEADER:
            cols[c].append(vals[c])
        src_line.append(ln)

    df = pd.DataFrame(cols)
    radius = df["radius"].to_numpy(float)
    abst = df["predict"].to_numpy() == ABSTAIN
    p_low = np.minimum(norm.cdf(radius / sigma), p_max)
    df["sigma"] = sigma
    df["N0"] = N0
    df["N"] = N
    df["alpha"] = alpha
    df["nA"] = pd.array([pd.NA] * len(df), dtype="Int64")
    df["pA_lower"] = np.where(abst, np.nan, p_low)
    df["imported"] = True
    df["source_line"] = np.asarray(src_line, dtype=np.int64)
    df["mode"] = "certify"
    df = df.sort_values("idx", kind="stable").reset_index(drop=True)

    source = {"path": str(p), "sha256": sha256_bytes(raw), "format": FORMAT, "rows": len(df), "bytes": len(raw)}
    config = {"imported_from": source, "sigmas": [sigma], "N0": N0, "N": N, "alpha": alpha, "mode": "certify",
              "dataset": dataset, "split": split}
    data = {k: v for k, v in (("dataset", dataset), ("split", split)) if v is not None}
    if data:
        data["imported"] = True
    prov = {"seed": None, "device": None, "torch_version": "n/a (imported log)", "threads": None, "models": [],
            "data": data, "command": command}
    return CohenLog(df=df, config=config, prov=prov, path=str(p))


def cohen_table(path: str | Path, **declared):
    """A Cohen-format log read as an in-memory certify :class:`~robcli.tables.io.Table` (validated by the schema).

    ``declared``: the keyword arguments of :func:`read_cohen_log` (``sigma`` required).
    """
    from robcli import __version__
    from robcli.tables.io import Table, coerce
    from robcli.tables.schema import SCHEMA_VERSION

    log = read_cohen_log(path, **declared)
    df = coerce(log.df, "certify", str(path))
    meta = {"table": "certify", "schema_version": SCHEMA_VERSION, "version": __version__, "config": log.config,
            "seed": None, "device": "", "models": [], "data": log.prov["data"], "command": log.prov["command"]}
    return Table(df=df, kind="certify", meta=meta, path=str(path))


def import_cohen_log(path: str | Path, out: str | Path, **declared) -> Path:
    """Read a Cohen-format log (:func:`read_cohen_log`) and write it as a certify table at ``out`` (atomic)."""
    from robcli.tables.io import write_table

    log = read_cohen_log(path, **declared)
    return write_table(log.df, out, "certify", config=log.config, prov=log.prov)


def _fmt_float(v: float) -> str:
    return repr(float(v))  # shortest text that reads back to the same float: no radius is rounded up


def cohen_log_text(df) -> str:
    """One (table, sigma) of a certify table as a Cohen-format log (certify.py's, or predict.py's for
    ``mode == "predict"`` rows). Rows are written in idx order; ``correct`` as 0/1; ``time`` in seconds.

    Raises:
        TableError: the rows hold several sigmas, or mix certify and predict mode.
    """
    sigmas = sorted({float(s) for s in df["sigma"]}) if len(df) else []
    if len(sigmas) > 1:
        raise TableError(f"a Cohen-format log holds one sigma; these rows hold {', '.join(f'{s:g}' for s in sigmas)}")
    modes = set(df["mode"]) if "mode" in df.columns else {"certify"}
    if len(modes) > 1:
        raise TableError("a Cohen-format log is either a certify or a predict log; these rows mix both modes")
    predict = modes == {"predict"}
    head = PREDICT_HEADER if predict else CERTIFY_HEADER
    out = ["\t".join(head)]
    d = df.sort_values("idx", kind="stable")
    for r in d.itertuples(index=False):
        pred, y = int(r.predict), int(r.label)
        row = [str(int(r.idx)), str(y), str(pred)]
        if not predict:
            row.append(_fmt_float(0.0 if pred == ABSTAIN else float(r.radius)))
        row += [str(int(pred == y)), f"{float(r.time):.6g}"]
        out.append("\t".join(row))
    return "\n".join(out) + "\n"


def _sigma_name(sigma: float) -> str:
    return f"sigma_{sigma:g}"


def plan_cohen_export(tables, out: str | Path | None) -> list[tuple[Path, str]]:
    """Where each (table, sigma) goes and what it holds, for ``report --format cohen-tsv --out OUT``.

    One (table, sigma) and ``OUT`` ending in ``.tsv``: that file. Otherwise ``OUT`` is a folder and each file is
    named ``<table name>_sigma_<sigma>.tsv`` (the table name is its file or shard folder name without
    ``.parquet``, ``.tsv`` or ``.txt``). Nothing is written here.

    Raises:
        UsageError: no ``out``; a table that is not a certify table; ``OUT.tsv`` for several files; two tables
            whose names would give the same file; nothing to write.
    """
    if out is None:
        raise UsageError("--format cohen-tsv writes one file per certify table and sigma: give --out FILE.tsv "
                         "(one table, one sigma) or --out FOLDER")
    parts: list[tuple[str, float, Any, str]] = []
    for t in tables:
        if t.kind != "certify":
            raise UsageError(f"--format cohen-tsv writes certify tables; {t.path} is a {t.kind} table")
        stem = Path(t.path).name
        for suffix in (".parquet", ".tsv", ".txt"):  # Cohen's own names (sigma_0.25) keep their dots
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        for sg in sorted({float(s) for s in t.df["sigma"]}):
            g = t.df[t.df["sigma"] == sg]
            parts.append((stem, sg, g, t.path))
    if not parts:
        raise UsageError("--format cohen-tsv: the certify tables hold no rows")
    out = Path(out)
    if out.suffix.lower() == ".tsv":
        if len(parts) > 1:
            names = ", ".join(f"{s} sigma={sg:g}" for s, sg, _, _ in parts[:4])
            raise UsageError(f"--out {out}: {len(parts)} (table, sigma) pairs ({names}{', ...' if len(parts) > 4 else ''}) "
                             "give one file each: --out must be a folder")
        return [(out, cohen_log_text(parts[0][2]))]
    plan: list[tuple[Path, str]] = []
    owner: dict[Path, str] = {}
    for stem, sg, g, src in parts:
        dest = out / f"{stem}_{_sigma_name(sg)}.tsv"
        if dest in owner:
            raise UsageError(f"{src} and {owner[dest]} would both write {dest}: rename one of the tables")
        owner[dest] = src
        plan.append((dest, cohen_log_text(g)))
    return plan
