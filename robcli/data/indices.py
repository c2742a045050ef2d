"""Index lists (``partition --export``, ``attack --subset``, ``finetune --train-subset``) and where they come from.

Example indices are positions within a split's index space: ``train``, ``val`` and ``train_full`` share one
(val is carved from train), ``test`` has its own. An index list exported from a test-split table therefore
names *other* examples when read against the train split; the exporter writes a header comment naming the
data set and split, and the readers refuse a list from another data set or index space.
"""

from __future__ import annotations

import re
from pathlib import Path

from robcli.errors import DataError, UsageError

HEADER = "# robcli index list:"
_KV = re.compile(r"(\w+)=(\S+)")


def index_space(split: str | None) -> str | None:
    """``test`` or ``train`` (train, val and train_full index the same examples); None when unknown."""
    if split is None:
        return None
    return "test" if str(split) == "test" else "train"


def header_line(data_meta: dict | None) -> str:
    """The header comment of an exported index list (empty when the table records no data set)."""
    d = data_meta or {}
    if not d.get("dataset"):
        return ""
    return f"{HEADER} dataset={d['dataset']} split={d.get('split') or 'unknown'}\n"


def read_index_list(path: str | Path, flag: str) -> tuple[list[int], dict]:
    """Indices (one per line, ``#`` comments) and the origin recorded in a robcli header (may be empty).

    Raises:
        DataError: the file is missing, not text, or a line is not an integer.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{flag} file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        hint = (" (a partition table: export an index list with `robcli partition TABLE --export-split SPLIT "
                "--export FILE`)") if p.suffix == ".parquet" else ""
        raise DataError(f"{flag} {p} is not a text file of indices{hint}") from None
    ids: list[int] = []
    origin: dict = {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith(HEADER):
            origin = dict(_KV.findall(line[len(HEADER):]))
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        try:
            ids.append(int(s))
        except ValueError:
            raise DataError(f"{flag} {p} line {n}: {s!r} is not an example index") from None
    return ids, origin


def check_origin(origin: dict, dataset: str, split: str, what: str) -> None:
    """Refuse indices recorded for another data set or another index space (e.g. test indices for train)."""
    ds, sp = origin.get("dataset"), origin.get("split")
    if ds and ds != dataset:
        raise UsageError(f"{what} lists examples of data set {ds!r}, not {dataset!r}")
    if sp and sp != "unknown" and index_space(sp) != index_space(split):
        raise UsageError(f"{what} lists {sp}-split examples; they would name other examples of the {split} split "
                         f"(indices are positions within a split)")
