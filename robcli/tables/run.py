"""One resumable table run: a fixed chunk plan, one part file per finished chunk, resume, and an atomic finish.

Every long command that writes a table (``attack``, ``certify``, the mixture attacks and certificates) runs through
a :class:`TableRun`. While it runs, the final table ``OUT`` does not exist; its progress lives beside it::

    OUT.parts/
      plan.json              kind, the configuration (the resume key), the chunk plan (example ids, chunk size)
      chunk-000000.parquet   one part per finished chunk: a robcli table of the same kind, written atomically
      chunk-000003.parquet   (temp file + fsync + rename), so a kill loses at most the chunks in flight

The chunk plan does not depend on how the work is spread: chunk ``k`` holds the examples at positions
``[k * size, (k + 1) * size)`` of the selection, in example order, and engines seed their randomness per
example or per chunk (never per process), so any subset of chunks, computed in any order, by any number of
processes, in one run or several (``--resume``), gives the same rows. :meth:`TableRun.finish` checks that the
parts hold exactly the planned examples (none missing, none twice), merges them in example order and writes
``OUT`` atomically; only then is the parts folder removed.

``--resume`` continues from the parts folder when its plan was made with the same configuration (keys that do
not change results, listed in ``free_keys``, may differ); a complete ``OUT`` with the same configuration is
reported as complete and not recomputed. Without ``--resume`` an existing ``OUT`` or parts folder is refused
(``--force`` starts over).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from robcli.errors import TableError, UsageError

PLAN = "plan.json"
PART_PREFIX = "chunk-"
# keys of a recorded configuration that never change a table's rows
RUN_FREE_KEYS = ("out", "resume", "force", "quiet", "device")


@dataclass(frozen=True)
class Chunk:
    """One unit of work: the examples at positions ``lo .. hi - 1`` of the selection (``ids`` = their idx)."""

    id: int
    lo: int
    hi: int

    @property
    def positions(self) -> range:
        return range(self.lo, self.hi)

    def __len__(self) -> int:
        return self.hi - self.lo


def plan_chunks(n: int, size: int) -> list[Chunk]:
    """Chunks of ``size`` consecutive positions covering ``0 .. n - 1`` (the last one may be shorter)."""
    if size < 1:
        raise ValueError("chunk size must be >= 1")
    return [Chunk(k, lo, min(n, lo + size)) for k, lo in enumerate(range(0, n, size))]


def parts_path(out: str | Path) -> Path:
    """Where a run keeps the parts of ``out`` while it is in progress."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def part_name(chunk_id: int) -> str:
    return f"{PART_PREFIX}{int(chunk_id):06d}.parquet"


def _ids_digest(ids: Sequence[int]) -> str:
    return hashlib.sha256(",".join(str(int(i)) for i in ids).encode()).hexdigest()


def config_difference(a: dict, b: dict, free: Iterable[str] = ()) -> str | None:
    """The first key (as ``--flag: old vs new``) on which two recorded configurations differ, ignoring ``free``."""
    skip = set(RUN_FREE_KEYS) | set(free)
    for k in sorted(set(a) | set(b)):
        if k in skip:
            continue
        if a.get(k) != b.get(k):
            return f"{k.replace('_', '-')}: {a.get(k)!r} vs {b.get(k)!r}"
    return None


def _json_form(cfg: dict) -> dict:
    """A configuration as it reads back from JSON (tuples become lists), so recorded and live ones compare."""
    return json.loads(json.dumps(cfg, sort_keys=True, default=str))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class TableRun:
    """The resumable run that produces the table ``out`` (see the module docstring).

    Args:
        out: the final table (``.parquet``).
        kind: the table kind (:data:`robcli.tables.schema.SCHEMAS`).
        config: the recorded configuration; with ``free_keys`` removed it is the resume key.
        ids: the example ids (``idx``) of the selection, in order.
        chunk_size: examples per chunk (aligned by the caller to its batch / groups).
        prov: provenance for the metadata (:func:`robcli.tables.io.provenance`).
        resume, force: the user's ``--resume`` / ``--force``.
        free_keys: configuration keys that may differ between the parts and this run (e.g. certify's ``batch``).
        check: ``check(old_config, where)`` raises a UsageError with a more specific message than the generic
            configuration mismatch (e.g. certify's device-type check); called before the generic comparison.
        row_keys: the columns that identify a row besides ``idx`` (e.g. ``("eps", "attack")``): a part may hold
            several rows per example, but never the same key twice.

    Raises:
        UsageError: ``out`` or its parts exist without ``--resume``/``--force``; ``--resume`` with parts or a
            table made with another configuration; ``out`` not ending in ``.parquet``.
    """

    def __init__(self, out: str | Path, kind: str, config: dict, *, ids: Sequence[int], chunk_size: int,
                 prov: dict | None = None, resume: bool = False, force: bool = False,
                 free_keys: Iterable[str] = (), check: Callable[[dict, str], None] | None = None,
                 row_keys: Sequence[str] = ()):
        self.out = Path(out)
        if self.out.suffix != ".parquet":
            raise UsageError(f"--out {out}: give a file name ending in .parquet")
        if self.out.is_dir():
            raise UsageError(f"--out {out} is a directory; give a file name ending in .parquet")
        self.kind = kind
        self.config = dict(config)
        self.ids = [int(i) for i in ids]
        self.chunk_size = int(chunk_size)
        self.prov = prov or {}
        self.free_keys = tuple(free_keys)
        self.row_keys = tuple(row_keys)
        self._check = check
        self.parts = parts_path(self.out)
        self.chunks = plan_chunks(len(self.ids), self.chunk_size)
        self.complete = False  # True: ``out`` holds this table (finished, or found finished at the start)
        self.already = False  # True: ``out`` already held this table when the run was opened (``--resume``)
        self.after_write: Callable[[Chunk], None] | None = None  # called after each stored part
        self._done: set[int] = set()
        self._open(resume, force)

    # ---- set-up -----------------------------------------------------------------------------------------

    def _plan_record(self) -> dict:
        return {"kind": self.kind, "config": self.config, "chunk_size": self.chunk_size, "n": len(self.ids),
                "ids_sha256": _ids_digest(self.ids), "ids": self.ids, "prov": self.prov,
                "free_keys": list(self.free_keys), "row_keys": list(self.row_keys)}

    def _compare(self, old: dict, where: str, hint: str) -> None:
        if self._check is not None:
            self._check(old, where)
        diff = config_difference(_json_form(old), _json_form(self.config), self.free_keys)
        if diff is not None:
            raise UsageError(f"{where} was made with a different configuration ({diff}); {hint}")

    def _open(self, resume: bool, force: bool) -> None:
        has_parts = self.parts.exists()
        if force:
            if has_parts:
                shutil.rmtree(self.parts)
            return
        if self.out.exists() and not has_parts:
            if not resume:
                raise UsageError(f"{self.out} exists; pass --force to overwrite or --resume to continue")
            from robcli.tables.io import read_table

            t = read_table(self.out, self.kind)
            self._compare(t.config, str(self.out), "use --force to start over")
            self.complete = self.already = True
            self.table = t
            return
        if has_parts:
            if not resume:
                raise UsageError(f"{self.parts} holds an unfinished run of {self.out.name}; pass --resume to "
                                 "continue it or --force to start over")
            plan = self._read_plan()
            self._compare(plan.get("config") or {}, str(self.parts),
                          "drop --resume (or use --force) to start over")
            if plan.get("chunk_size") != self.chunk_size or plan.get("ids_sha256") != _ids_digest(self.ids):
                raise UsageError(f"{self.parts} planned other examples or chunks than this run (another --n-ex, "
                                 "--skip, --subset, --batch or --chunk?); drop --resume (or use --force) to start over")
            self._done = self.stored()

    def _read_plan(self) -> dict:
        p = self.parts / PLAN
        try:
            plan = json.loads(p.read_text())
        except FileNotFoundError:
            raise TableError(f"{self.parts} has no {PLAN}: not a robcli parts folder (remove it or use --force)") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TableError(f"{p} is corrupt; use --force to start over") from None
        if not isinstance(plan, dict) or plan.get("kind") != self.kind:
            raise TableError(f"{self.parts} holds parts of a {plan.get('kind') if isinstance(plan, dict) else '?'} "
                             f"table, not of a {self.kind} table")
        return plan

    def stored(self) -> set[int]:
        """The chunk ids whose parts are in the parts folder now (read from the folder, not remembered)."""
        done = set()
        for p in self.parts.glob(f"{PART_PREFIX}*.parquet"):
            try:
                done.add(int(p.stem[len(PART_PREFIX):]))
            except ValueError:
                continue
        return {c for c in done if 0 <= c < len(self.chunks)}

    def start(self) -> None:
        """Create the parts folder and its plan (idempotent; the plan is written atomically)."""
        if self.complete:
            return
        from robcli.utils.fsio import atomic_write_bytes

        self.parts.mkdir(parents=True, exist_ok=True)
        if not (self.parts / PLAN).exists():
            atomic_write_bytes(self.parts / PLAN, json.dumps(self._plan_record(), sort_keys=True, default=str).encode())

    # ---- work ---------------------------------------------------------------------------------------------

    @property
    def done(self) -> set[int]:
        return set(self._done)

    def pending(self) -> list[Chunk]:
        """The chunks without a part yet, in chunk order (empty when the table is complete)."""
        if self.complete:
            return []
        return [c for c in self.chunks if c.id not in self._done]

    def write(self, chunk: Chunk, df) -> Path:
        """Store a finished chunk's rows as its part (atomic, fsynced). The rows must be the chunk's examples."""
        import numpy as np

        from robcli.tables.io import write_table

        want = set(self.ids[chunk.lo:chunk.hi])
        got = set(np.asarray(df["idx"], dtype=np.int64).tolist()) if len(df) else set()
        if got != want:
            raise RuntimeError(f"chunk {chunk.id} produced rows for other examples than planned")  # a bug
        self.start()
        path = self.parts / part_name(chunk.id)
        write_table(df, path, self.kind, config=self.config, prov=self.prov, fsync=True)
        self._done.add(chunk.id)
        if self.after_write is not None:
            self.after_write(chunk)
        return path

    def rows(self, chunk_ids: Iterable[int] | None = None):
        """The rows of the finished chunks (all, or ``chunk_ids``), concatenated in chunk order."""
        import pandas as pd

        from robcli.tables.io import read_table

        ids = sorted(self.stored() if chunk_ids is None else set(chunk_ids))
        frames = [read_table(self.parts / part_name(c), self.kind).df for c in ids]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else None

    # ---- finish ---------------------------------------------------------------------------------------------

    def check_parts(self) -> None:
        """Raise TableError unless the parts folder holds every planned chunk with exactly its examples."""
        done = self.stored()
        missing = [c.id for c in self.chunks if c.id not in done]
        if missing:
            raise TableError(f"{self.parts} lacks {len(missing)} of {len(self.chunks)} chunks (e.g. chunk "
                             f"{missing[0]}); run the command again with --resume to compute them")

    def _check_part(self, chunk: Chunk, part) -> None:
        """A part must hold exactly its chunk's examples and be made with the run's configuration."""
        import numpy as np

        name = part_name(chunk.id)
        diff = config_difference(_json_form(part.config), _json_form(self.config), self.free_keys)
        if diff is not None:
            raise TableError(f"{self.parts / name} was made with another configuration ({diff}); remove it "
                             "(or rerun with --force)")
        got = np.asarray(part.df["idx"], dtype=np.int64).tolist() if len(part.df) else []
        want = set(self.ids[chunk.lo:chunk.hi])
        if set(got) != want:
            extra = sorted(set(got) - want)
            what = (f"example {extra[0]}, which belongs to another chunk (a duplicated part?)" if extra else
                    f"only {len(set(got))} of its {len(want)} examples")
            raise TableError(f"{self.parts / name} holds {what}; remove it and rerun with --resume")

    def finish(self, sort_by: Sequence[str] | None = None, frame: Callable | None = None):
        """Merge the parts into ``out`` (atomic) after checking the plan's examples, then remove the parts.

        Args:
            sort_by: the row order of the final table (default: the kind's row key, e.g. idx then eps).
            frame: turns the list of part frames into the final frame (e.g. to keep column order / types of an
                empty table); default ``pandas.concat``.

        Returns:
            The final table as a pandas DataFrame.

        Raises:
            TableError: a chunk is missing, a part holds another chunk's examples or was made with another
                configuration, an example appears twice, or rows outside the plan. Nothing is written then.
        """
        import numpy as np
        import pandas as pd

        from robcli.tables.io import ROW_KEYS, read_table, write_table

        if self.complete:
            return self.table.df
        self.start()
        self.check_parts()
        frames = []
        for c in self.chunks:
            part = read_table(self.parts / part_name(c.id), self.kind)
            self._check_part(c, part)
            frames.append(part.df)
        df = frame(frames) if frame is not None else pd.concat(frames, ignore_index=True)
        key = ["idx", *[k for k in self.row_keys if k in df.columns]]
        if len(df):
            if df.duplicated(key).any():
                dup = df.loc[df.duplicated(key), key].iloc[0].to_dict()
                raise TableError(f"{self.parts} holds the row {dup} twice; remove the duplicate part (or --force)")
            have = set(np.asarray(df["idx"], dtype=np.int64).tolist())
        else:
            have = set()
        want = set(self.ids)
        if have != want:
            extra, lost = sorted(have - want), sorted(want - have)
            what = f"example {lost[0]} is missing" if lost else f"example {extra[0]} is not in the plan"
            raise TableError(f"{self.parts} does not hold the planned examples ({what}); use --force to start over")
        cols = [c for c in (ROW_KEYS.get(self.kind, ("idx",)) if sort_by is None else sort_by) if c in df.columns]
        if cols and len(df):
            df = df.sort_values(cols, kind="stable").reset_index(drop=True)
        write_table(df, self.out, self.kind, config=self.config, prov=self.prov, fsync=True)
        shutil.rmtree(self.parts, ignore_errors=True)
        _fsync_dir(self.out.parent)
        self.complete = True
        return df

    @classmethod
    def from_parts(cls, parts: str | Path, out: str | Path, *, force: bool = False) -> TableRun:
        """The run whose parts folder is ``parts`` (its ``plan.json`` gives kind, configuration and examples),
        to be finished into ``out`` (``robcli merge``).

        Raises:
            TableError: not a robcli parts folder, or a corrupt plan.
            UsageError: ``out`` exists (without ``force``), or does not end in ``.parquet``.
        """
        parts = Path(parts)
        out = Path(out)
        if not parts.is_dir():
            raise TableError(f"{parts} is not a folder of parts (robcli writes them to OUT.parts/)")
        try:
            plan = json.loads((parts / PLAN).read_text())
        except FileNotFoundError:
            raise TableError(f"{parts} has no {PLAN}: not a robcli parts folder") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TableError(f"{parts / PLAN} is corrupt") from None
        need = ("kind", "config", "chunk_size", "ids")
        if not isinstance(plan, dict) or any(k not in plan for k in need):
            raise TableError(f"{parts / PLAN} lacks {', '.join(need)}: made by an older robcli; rerun the command "
                             "with --resume instead")
        if out.exists() and not force:
            raise UsageError(f"{out} exists; pass --force to overwrite it")
        run = cls.__new__(cls)
        run.out, run.kind, run.config = out, str(plan["kind"]), dict(plan["config"])
        run.ids, run.chunk_size = [int(i) for i in plan["ids"]], int(plan["chunk_size"])
        run.prov, run._check = dict(plan.get("prov") or {}), None
        run.free_keys, run.row_keys = tuple(plan.get("free_keys") or ()), tuple(plan.get("row_keys") or ())
        run.parts, run.chunks = parts, plan_chunks(len(run.ids), run.chunk_size)
        run.complete, run.already, run.after_write = False, False, None
        if out.suffix != ".parquet":
            raise UsageError(f"--out {out}: give a file name ending in .parquet")
        run._done = run.stored()
        return run

    def abandon(self) -> None:
        """Remove the parts folder (a run that failed on bad input before any work: nothing is left behind)."""
        if not self._done:
            shutil.rmtree(self.parts, ignore_errors=True)


def execute(run: TableRun, work: Callable[[Chunk], object], *, chunks: Sequence[Chunk] | None = None,
            progress: Callable[[int, int, str], None] | None = None, desc: str = "working"):
    """Compute the pending chunks one by one (``work(chunk) -> rows``), store each as a part, then finish.

    A failure or interrupt keeps every finished part, so ``--resume`` continues; a failure before the first
    part leaves nothing behind. Returns the final DataFrame.
    """
    todo = list(run.pending() if chunks is None else chunks)
    total = len(run.chunks)
    n_done = total - len(run.pending())
    if progress is not None:
        progress(n_done, total, desc)
    try:
        for c in todo:
            run.write(c, work(c))
            n_done += 1
            if progress is not None:
                progress(n_done, total, desc)
    except BaseException:
        run.abandon()
        raise
    return run


__all__ = ["Chunk", "TableRun", "config_difference", "execute", "part_name", "parts_path", "plan_chunks"]
