"""``robcli attack`` as a library call: load data and model, run the engine through a resumable table run.

:func:`attack_table` returns the table (a DataFrame) or, for one shard of the chunk plan, ``None``; it writes
``OUT`` through :class:`robcli.tables.run.TableRun` (one part per batch in ``OUT.parts/``, resume keyed by the
configuration, a checked atomic merge).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from robcli.attacks.engine import AttackConfig, run_attack


def read_subset(path: str, split_name: str | None, dataset: str, split: str) -> list[int]:
    """Example indices from a text file (one per line, '#' comments) or a partition table + split name.

    Refuses a list or table made on another data set or another split's index space.
    """
    from robcli.data.indices import check_origin, read_index_list
    from robcli.errors import DataError, UsageError

    p = Path(path)
    if not p.is_file():
        raise DataError(f"--subset file {p} does not exist")
    if p.suffix == ".parquet":
        from robcli.tables.io import read_table
        from robcli.tables.schema import PARTITION_SPLITS

        if not split_name:
            raise UsageError(f"--subset {p} is a partition table: name the split with --subset-split "
                             f"({', '.join(PARTITION_SPLITS)})")
        if split_name not in PARTITION_SPLITS:
            raise UsageError(f"unknown --subset-split {split_name!r}; choose one of {', '.join(PARTITION_SPLITS)}")
        t = read_table(p, "partition")
        check_origin(t.meta.get("data") or {}, dataset, split, f"--subset {p}")
        df = t.df
        return [int(i) for i in df.loc[df["split"] == split_name, "idx"]]
    if split_name:
        raise UsageError("--subset-split applies to a partition table (.parquet) only")
    ids, origin = read_index_list(p, "--subset")
    check_origin(origin, dataset, split, f"--subset {p}")
    return ids


@dataclass
class AttackResult:
    """What :func:`attack_table` did: ``df`` the table (``None`` on a process that did not write it: a shard, an
    array task, a rank other than 0), ``complete`` when ``out`` already held it (``--resume`` of a finished
    run), ``notes`` pyautoattack's warnings, ``parts`` the parts folder, ``world`` where this process stood."""

    df: object
    out: Path
    parts: Path
    complete: bool = False
    notes: list | None = None
    world: object = None


def attack_table(cfg: AttackConfig, *, model: str, dataset: str, out: str | Path, split: str = "test",
                 n_ex: int | None = None, skip: int = 0, subset: str | None = None, subset_split: str | None = None,
                 arch: str | None = None, num_classes: int | None = None, input_shape: str | None = None,
                 data_dir: str | None = None, download: bool = False, image_size: int | None = None,
                 device: str = "auto", resume: bool = False, force: bool = False,
                 world=None, progress: Callable | None = None, command: list[str] | None = None) -> AttackResult:
    """Attack ``model`` on the selected examples of ``dataset`` and write the attack table ``out``.

    ``image_size``: the side length for imagefolder images (default: the one a run directory's card records).
    ``world``: a :class:`robcli.distributed.World` (default: detected from the launcher's environment, see
    :func:`robcli.distributed.run_table`): the chunks (batches) of the plan are spread over the job's processes;
    a ``--shard I/K`` process or SLURM array task computes the chunks with ``id % K == I`` and leaves their
    parts in ``OUT.parts/`` (merged by ``robcli merge`` or a later run with ``resume``).

    Raises:
        UsageError, DataError, ModelError: bad input, found before anything is written.
        NonFiniteOutput: NaN/inf logits (the parts this run created are removed: nothing is written).
    """
    from robcli.data.registry import load_split
    from robcli.distributed import detect, run_table
    from robcli.errors import UsageError
    from robcli.models import load_model
    from robcli.models.card import image_size_for
    from robcli.models.precision import in_precision
    from robcli.tables.io import provenance
    from robcli.tables.run import TableRun, parts_path
    from robcli.utils.device import check_precision, resolve_rank_device

    out = Path(out)
    if out.suffix != ".parquet":
        raise UsageError(f"--out {out}: give a file name ending in .parquet")
    world = world or detect()
    spec = cfg.spec
    if spec.model_check is not None:
        spec.model_check(cfg, model)
    dev = resolve_rank_device(device, world)
    check_precision(cfg.precision, dev)
    ids = read_subset(subset, subset_split, dataset, split) if subset is not None else None
    data = load_split(dataset, split, data_dir=data_dir, download=download,
                      image_size=image_size_for(image_size, model))
    data = data.select(n_ex=n_ex, skip=skip, subset=ids)
    if spec.load is not None:
        lm = spec.load(cfg, model, data.info, dev)
    else:
        lm = load_model(model, arch=arch, dataset_info=data.info, seed=cfg.seed, num_classes=num_classes,
                        input_shape=input_shape)
    prov = provenance(seed=cfg.seed, device=dev, models=lm.files or [], data=data.fingerprint(), command=command or [])
    net = in_precision(lm.model, cfg.precision)
    notes: list[str] = []

    def open_run(resume_: bool, force_: bool) -> TableRun:
        return TableRun(out, "attack", cfg.as_dict(), ids=data.idx.tolist(), chunk_size=cfg.batch, prov=prov,
                        resume=resume_, force=force_, row_keys=("eps",))

    def compute(run: TableRun, chunks, prog) -> None:
        run_attack(net, data, cfg, device=dev, run=run, chunks=chunks, merge=False, progress=prog, notes=notes)

    def finish(run: TableRun):
        from robcli.attacks.engine import _frame, columns

        return run.finish(sort_by=("idx", "eps"), frame=lambda fs: _frame(fs, columns(cfg)))

    df, run = run_table(out, open_run, compute, world=world, resume=resume, force=force, progress=progress,
                        desc=f"{cfg.attack} {cfg.norm}", finish=finish)
    return AttackResult(df, out, parts_path(out), complete=bool(run is not None and run.already), notes=notes, world=world)


__all__ = ["AttackResult", "attack_table", "read_subset"]
