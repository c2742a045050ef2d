"""Atomic, validating Parquet writer and a checking reader.

Metadata keys (all strings, in the Arrow schema metadata):
``robcli.table``, ``robcli.schema_version``, ``robcli.version``, ``robcli.config`` (JSON),
``robcli.seed``, ``robcli.device``, ``robcli.torch_version``, ``robcli.threads`` (torch CPU threads),
``robcli.models`` (JSON list of
``{"path", "sha256"}``), ``robcli.data`` (JSON data fingerprint), ``robcli.command`` (JSON argv),
``robcli.created`` (UTC ISO time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robcli.errors import TableError, UsageError
from robcli.tables.schema import (
    AGAINST_VALUES,
    FRACTIONS,
    IMPORTED_COLUMN,
    IMPORTED_ONLY_NULLS,
    NULLABLE,
    OPTIONAL,
    PARTITION_SPLITS,
    SCHEMA_VERSION,
    SCHEMAS,
)
from robcli.utils.fsio import atomic_target

META_PREFIX = "robcli."
# the columns that identify a row: two shards of one table never share a key
ROW_KEYS: dict[str, tuple[str, ...]] = {
    "attack": ("idx", "eps", "attack"),
    "certify": ("idx", "sigma"),
    "partition": ("idx",),
}


@dataclass
class Table:
    """A table read from disk: the data frame, its kind and its decoded metadata."""

    df: Any  # pandas.DataFrame
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def config(self) -> dict:
        return self.meta.get("config") or {}


def provenance(
    *,
    seed: int | None = None,
    device: Any = None,
    models: list[str | Path] | None = None,
    data: dict | None = None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Collect the provenance fields for a table's metadata."""
    from robcli.utils.hashing import sha256_file

    try:
        import torch

        torch_version = torch.__version__
        threads = torch.get_num_threads()  # CPU float reductions (and so results) can depend on it
    except ImportError:  # pragma: no cover
        torch_version, threads = "none", None
    model_entries = []
    for m in models or []:
        p = Path(m)
        entry: dict[str, Any] = {"path": str(m)}
        if p.is_dir():  # a run directory: the weights it loads, and its card (normalization, classes)
            w = p / "model.safetensors"
            files = [w] if w.is_file() else sorted(p.glob("*.safetensors"))
            if (p / "card.json").is_file():
                entry["card_sha256"] = sha256_file(p / "card.json")
            p = files[0] if files else p
        entry["sha256"] = sha256_file(p) if p.is_file() else None
        model_entries.append(entry)
    return {
        "seed": seed,
        "device": str(device) if device is not None else None,
        "torch_version": torch_version,
        "threads": threads,
        "models": model_entries,
        "data": data or {},
        "command": command,
    }


def _coerce_column(s, typ: str, nullable: bool):
    """Convert one column to its schema type, refusing lossy or ambiguous conversions."""
    import numpy as np
    from pandas.api import types as pt

    if typ == "list<float64>":
        out = []
        for v in s.tolist():
            if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
                raise ValueError("values that are not lists")
            a = np.asarray(v, dtype=float).reshape(-1)
            if not np.isfinite(a).all():
                raise ValueError("non-finite list entries")
            out.append([float(x) for x in a])
        import pandas as pd

        return pd.Series(out, index=s.index, dtype=object)
    if typ == "string":
        if s.isna().any():
            raise ValueError("missing values")
        if not all(isinstance(v, str) for v in s.tolist()):
            raise ValueError("non-text values")
        return s.astype(str)
    if s.dtype == object or pt.is_string_dtype(s.dtype):
        raise ValueError("text values")
    if typ == "bool":
        if s.isna().any():
            raise ValueError("missing values")
        if pt.is_bool_dtype(s.dtype):
            return s.astype(bool)
        if pt.is_numeric_dtype(s.dtype) and s.isin([0, 1]).all():
            return s.astype(bool)
        raise ValueError("values other than true/false")
    if not pt.is_numeric_dtype(s.dtype) or pt.is_bool_dtype(s.dtype):
        raise ValueError(f"dtype {s.dtype}")
    if typ == "int64":
        missing = s.isna()
        if missing.any() and not nullable:
            raise ValueError("missing values")
        v = s[~missing].to_numpy(dtype=float) if missing.any() else s.to_numpy()
        if (pt.is_float_dtype(s.dtype) or missing.any()) and not (np.isfinite(v).all() and (np.floor(v) == v).all()):
            raise ValueError("non-integer values")
        # a nullable int column with gaps becomes pandas' nullable Int64 (null in Parquet); without gaps it stays
        # plain int64, so every reader of robcli's own tables sees the type it always did
        return s.astype("Int64") if missing.any() else s.astype("int64")
    if typ == "float64":
        out = s.astype("float64")
        if not nullable and out.isna().any():
            raise ValueError("NaN values")
        return out
    raise ValueError(f"unknown schema type {typ}")  # pragma: no cover


def coerce(df, kind: str, where: str = ""):
    """Validate ``df`` against the schema of ``kind`` and return a copy with the schema's types.

    Raises:
        TableError: a missing column, a value of the wrong type, NaN in a non-nullable column, or a
            fraction outside [0, 1].
    """
    import numpy as np

    pre = f"{where}: " if where else ""
    schema = SCHEMAS[kind]
    missing = [c for c in schema if c not in df.columns]
    if missing:
        raise TableError(f"{pre}{kind} table lacks required column(s): {', '.join(missing)}")
    df = df.copy()
    for col, typ in schema.items():
        try:
            df[col] = _coerce_column(df[col], typ, col in NULLABLE.get(kind, ()))
        except (ValueError, TypeError, OverflowError) as e:
            raise TableError(f"{pre}{kind} table column {col!r} cannot be {typ}: {e}") from None
    for col, typ in OPTIONAL.get(kind, {}).items():
        if col not in df.columns:
            continue
        try:
            df[col] = _coerce_column(df[col], typ, False)
        except (ValueError, TypeError, OverflowError) as e:
            raise TableError(f"{pre}{kind} table column {col!r} cannot be {typ}: {e}") from None
    if "against" in df.columns and kind == "certify":
        bad = sorted(set(df["against"]) - set(AGAINST_VALUES))
        if bad:
            raise TableError(f"{pre}certify table column 'against' holds {bad[0]!r}; expected prediction or label")
    for col in FRACTIONS.get(kind, ()):
        v = df[col].to_numpy(dtype=float)
        v = v[~np.isnan(v)]
        if v.size and (v.min() < 0 or v.max() > 1):
            raise TableError(f"{pre}{kind} table column {col!r} must hold fractions in [0,1] (got {v.min():g}..{v.max():g})")
    for col in IMPORTED_ONLY_NULLS.get(kind, ()):
        empty = df[col].isna().to_numpy()
        if empty.any():
            marked = df[IMPORTED_COLUMN] if IMPORTED_COLUMN in df.columns else None
            if marked is None or marked.isna().any() or not marked[empty].astype(bool).all():
                raise TableError(f"{pre}{kind} table column {col!r} is empty on rows not marked "
                                 f"{IMPORTED_COLUMN} = true (only imported logs may lack it)")
    if kind == "partition":
        bad = sorted(set(df["split"]) - set(PARTITION_SPLITS))
        if bad:
            raise TableError(f"{pre}partition table has unknown split(s): {', '.join(bad[:3])}")
    return df


def write_table(df, path: str | Path, kind: str, *, config: dict | None = None, prov: dict | None = None,
                fsync: bool = False) -> Path:
    """Validate ``df`` against the schema of ``kind`` and write it atomically with provenance metadata
    (``fsync``: flush the data to disk before the rename, as resumable runs do for their parts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from robcli import __version__

    if kind not in SCHEMAS:
        raise TableError(f"unknown table kind {kind!r}")
    df = coerce(df, kind)
    prov = prov or {}
    meta = {
        "table": kind,
        "schema_version": SCHEMA_VERSION,
        "version": __version__,
        "config": json.dumps(config or {}, sort_keys=True, default=str),
        "seed": json.dumps(prov.get("seed")),
        "device": "" if prov.get("device") is None else str(prov.get("device")),
        "torch_version": str(prov.get("torch_version")),
        "threads": json.dumps(prov.get("threads")),
        "models": json.dumps(prov.get("models") or [], default=str),
        "data": json.dumps(prov.get("data") or {}, sort_keys=True, default=str),
        "command": json.dumps(prov.get("command")),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError) as e:
        raise TableError(f"{kind} table cannot be stored as Parquet: {str(e).splitlines()[0][:120]}") from None
    existing = table.schema.metadata or {}
    merged = dict(existing)
    merged.update({(META_PREFIX + k).encode(): v.encode() for k, v in meta.items()})
    table = table.replace_schema_metadata(merged)
    path = Path(path)
    if path.exists() and path.is_dir():
        raise TableError(f"{path} is a directory; give a file name ending in .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path, fsync=fsync) as tmp:
        pq.write_table(table, tmp)
    return path


def _decode_meta(raw: dict[bytes, bytes] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        key = k.decode(errors="replace")
        if not key.startswith(META_PREFIX):
            continue
        name = key[len(META_PREFIX):]
        val = v.decode(errors="replace")
        if name in ("config", "seed", "models", "data", "command"):
            try:
                out[name] = json.loads(val)
            except json.JSONDecodeError:
                out[name] = val
        else:
            out[name] = val
    return out


def _read_one(path: Path) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        if is_cohen_log(path):
            raise TableError(f"{path} is a Cohen-format certification log, not a robcli table: import it with its "
                             "sigma, N and alpha first (robcli.tables.cohen.import_cohen_log), or give it to report "
                             "with --sigma") from None
        raise TableError(f"{path} is not a readable Parquet table ({type(e).__name__})") from None
    meta = _decode_meta(t.schema.metadata)
    kind = meta.get("table")
    if not kind:
        raise TableError(f"{path} is not a robcli table (no robcli.table metadata)")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise TableError(
            f"{path} has schema version {meta.get('schema_version')!r}; this robcli reads {SCHEMA_VERSION!r}"
        )
    if kind not in SCHEMAS:
        raise TableError(f"{path} is a {kind!r} table, a kind this robcli does not know")
    df = coerce(t.to_pandas(), kind, str(path))
    return Table(df=df, kind=kind, meta=meta, path=str(path))


# config keys that may differ between shards of one table (and between a run and its resume): they do not
# change the results (``batch`` only regroups the same per-example noise; ``compile`` only speeds up the model).
# The device type is compared separately (device_type), with its own message.
# Only certify draws its noise per example; elsewhere (attack) ``batch`` is part of the seeding and must agree.
SHARD_FREE_KEYS = ("shard", "out", "resume", "force", "quiet", "device_type")
CERTIFY_SHARD_FREE_KEYS = SHARD_FREE_KEYS + ("batch", "compile")


def _base_config(cfg: dict | None, kind: str | None = None) -> dict:
    free = CERTIFY_SHARD_FREE_KEYS if kind == "certify" else SHARD_FREE_KEYS
    return {k: v for k, v in (cfg or {}).items() if k not in free}


def device_type(t: Table) -> str | None:
    """The kind of device a table was computed on (``cpu``, ``cuda``, ``mps``), or None when unknown.

    Read from the config's ``device_type`` when recorded, else from the provenance ``device`` (``cuda:0``
    -> ``cuda``).
    """
    v = t.config.get("device_type") or t.meta.get("device") or ""
    v = str(v).split(":")[0].strip().lower()
    return v or None


def _parse_shard(text, where: str) -> tuple[int, int]:
    from robcli.utils.parse import parse_shard

    try:
        return parse_shard(str(text))
    except UsageError:
        raise TableError(f"{where} records shard {text!r}, not of the form I/K with 0 <= I < K") from None


def _check_shards_complete(path: Path, parts: list[Table]) -> None:
    """A folder of shards must hold exactly shards 0/K .. K-1/K (0-based, as ``--shard I/K``), one file each.

    Tables whose config records no shard are plain tables and are joined as they are; a folder that mixes
    them with shards is refused.
    """
    recorded = {p.path: p.config.get("shard") for p in parts}
    sharded = {k: v for k, v in recorded.items() if v not in (None, "")}
    if not sharded:
        return
    if len(sharded) != len(parts):
        plain = next(Path(k).name for k, v in recorded.items() if v in (None, ""))
        raise TableError(f"folder {path} mixes shards with an unsharded table ({plain})")
    shards = {k: _parse_shard(v, Path(k).name) for k, v in sharded.items()}
    ks = sorted({k for _, k in shards.values()})
    if len(ks) > 1:
        raise TableError(f"shards in {path} disagree on the number of shards K ({', '.join(map(str, ks))})")
    K = ks[0]
    owner: dict[int, str] = {}
    for name, (i, _) in shards.items():
        if i in owner:
            raise TableError(f"{Path(owner[i]).name} and {Path(name).name} in {path} are both shard {i}/{K}; "
                             "remove the duplicate")
        owner[i] = name
    missing = [i for i in range(K) if i not in owner]
    if missing:
        raise TableError(f"folder {path} lacks shard(s) {', '.join(f'{i}/{K}' for i in missing)} "
                         f"(has {len(owner)} of {K}); run them, or the folder is not the whole table")


def read_table(path: str | Path, kind: str | tuple[str, ...] | None = None) -> Table:
    """Read a robcli table (a file, or a folder of shards of one table) and check its kind.

    Raises:
        TableError: missing, corrupt, not a robcli table, wrong kind or schema version, or shards that
            disagree on kind, configuration, model files or device type, or a shard missing from 0/K..K-1/K.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise TableError(f"table {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise TableError(f"folder {path} holds no .parquet tables")
        parts = [_read_one(p) for p in files]
        kinds = {p.kind for p in parts}
        if len(kinds) != 1:
            raise TableError(f"folder {path} mixes table kinds: {', '.join(sorted(kinds))}")

        types = {p.path: device_type(p) for p in parts}
        known = sorted({v for v in types.values() if v})
        if len(known) > 1:
            names = ", ".join(f"{Path(k).name}: {v}" for k, v in types.items() if v)
            raise TableError(f"shards in {path} ran on different device types ({names}); CPU and CUDA noise "
                             "streams differ, so they are not shards of one table")
        base = _base_config(parts[0].config, parts[0].kind)
        models0 = [m.get("sha256") for m in parts[0].meta.get("models") or [] if isinstance(m, dict)]
        for p in parts[1:]:
            if _base_config(p.config, p.kind) != base:
                raise TableError(f"shards in {path} were made with different configurations ({Path(p.path).name})")
            if [m.get("sha256") for m in p.meta.get("models") or [] if isinstance(m, dict)] != models0:
                raise TableError(f"shards in {path} were made with different model files ({Path(p.path).name})")
        _check_shards_complete(path, parts)
        keys = [c for c in ROW_KEYS.get(parts[0].kind, ()) if c in parts[0].df.columns]
        if keys:
            seen: dict[tuple, str] = {}
            for p in parts:
                for row in p.df[keys].drop_duplicates().itertuples(index=False, name=None):
                    if row in seen:
                        raise TableError(
                            f"shards {Path(seen[row]).name} and {Path(p.path).name} in {path} both hold "
                            f"{dict(zip(keys, row))}; remove the duplicate shard"
                        )
                for row in p.df[keys].drop_duplicates().itertuples(index=False, name=None):
                    seen[row] = p.path
        frames = [p.df for p in parts if len(p.df)] or [parts[0].df]  # empty shards add no rows
        df = pd.concat(frames, ignore_index=True)
        sort_cols = [c for c in ("idx", "sigma", "eps", "attack") if c in df.columns]
        if sort_cols:
            df = df.sort_values(sort_cols, kind="stable").reset_index(drop=True)
        t = Table(df=df, kind=parts[0].kind, meta=dict(parts[0].meta), path=str(path))
        t.meta["shards"] = [p.path for p in parts]
    else:
        t = _read_one(path)
    if kind is not None:
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        if t.kind not in kinds:
            raise TableError(f"{path} is a {t.kind} table; expected {' or '.join(kinds)}")
    return t


def is_cohen_log(path: str | Path) -> bool:
    """Whether ``path`` is a text file whose first line is a Cohen et al. log header (``idx\tlabel...``), not
    a Parquet file. Lives here, beside the reader, so that :mod:`robcli.tables.cohen` depends on this module and
    not the other way round."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        with open(p, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    if head.startswith(b"PAR1"):
        return False
    first = head.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    return first.split("\t")[0].strip() == "idx" and "\t" in first
