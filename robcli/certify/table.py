"""``robcli certify`` as a library call: load data and model, certify through a resumable, spreadable table run.

:func:`certify_table` writes ``OUT`` through :class:`robcli.tables.run.TableRun` (one part per chunk of examples
in ``OUT.parts/``, resume keyed by the configuration, a checked atomic merge) and
:func:`robcli.distributed.run_table` (the chunks spread over torchrun/srun ranks, ``--shard`` processes or SLURM
array tasks). Every example's noise is seeded by (seed, idx, sigma), and a chunk is a whole number of certify's
groups, so the table does not depend on how the chunks are spread.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

# examples per chunk (``--chunk``): fixed-N CERTIFY: a kill loses at most one chunk per process, and a
# 10,000-example test set makes 1,250 parts; sequential: each chunk fills its own pool of in-flight examples.
# Not derived from --batch, so that processes with different --batch (different GPUs) share one plan.
FIXED_CHUNK = 8
SEQUENTIAL_CHUNK = 64


def chunk_size(cfg, chunk: int | None = None) -> int:
    """Examples per chunk of a certify run (``chunk``, else the default of the engine ``cfg`` selects: the
    sequential test's pools, or one fixed-N certificate per example, as the mixture certificates too)."""
    from robcli.certify.sequential import SequentialConfig
    from robcli.errors import UsageError

    if chunk is not None:
        if chunk < 1:
            raise UsageError(f"--chunk {chunk} must be >= 1")
        return int(chunk)
    return SEQUENTIAL_CHUNK if isinstance(cfg, SequentialConfig) else FIXED_CHUNK


@dataclass
class CertifyResult:
    """What :func:`certify_table` did: ``df`` the table (``None`` on a process that did not write it: a shard, an
    array task, a rank other than 0), ``complete`` when ``out`` already held it, ``parts`` the parts folder,
    ``world`` where this process stood."""

    df: object
    out: Path
    parts: Path
    complete: bool = False
    world: object = None


def certify_table(cfg, *, model: str, dataset: str, out: str | Path, split: str = "test", n_ex: int | None = None,
                  skip: int = 0, arch: str | None = None, num_classes: int | None = None,
                  input_shape: str | None = None, data_dir: str | None = None, image_size: int | None = None,
                  device: str = "auto", resume: bool = False, force: bool = False, world=None, chunk: int | None = None,
                  progress: Callable | None = None, command: list[str] | None = None) -> CertifyResult:
    """Certify ``model`` on the selected examples of ``dataset`` (fixed-N CERTIFY or sequential, by the type of
    ``cfg``: :class:`~robcli.certify.smoothing.CertifyConfig` or :class:`~robcli.certify.sequential.SequentialConfig`)
    and write the certify table ``out``.

    ``world``: a :class:`robcli.distributed.World` (default: detected from the environment). ``chunk``: examples
    per chunk (:func:`chunk_size`); part of the plan (a resume must use the same), not of the results: certify's
    groups never span two chunks, and each example's noise is its own.

    Raises:
        UsageError, DataError, ModelError: bad input, found before anything is written; ``--resume`` of a
            table computed on another device type (CPU and CUDA draw different noise).
        NonFiniteOutput: NaN/inf logits (nothing is written).
    """
    from robcli.certify.sequential import SequentialConfig, run_sequential
    from robcli.certify.smoothing import run_certify
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
    dev = resolve_rank_device(device, world)
    check_precision(cfg.precision, dev)
    # the device type is part of the configuration: CPU and CUDA generators draw different noise
    cfg = replace(cfg, extra={**cfg.extra, "device_type": dev.type})  # the caller's configuration is left as it was
    data = load_split(dataset, split, data_dir=data_dir, image_size=image_size_for(image_size, model)).select(
        n_ex=n_ex, skip=skip)
    lm = load_model(model, arch=arch, dataset_info=data.info, seed=cfg.seed, num_classes=num_classes,
                    input_shape=input_shape)
    prov = provenance(seed=cfg.seed, device=dev, models=lm.files or [], data=data.fingerprint(), command=command or [])
    net = in_precision(lm.model, cfg.precision)
    size = chunk_size(cfg, chunk)
    runner = run_sequential if isinstance(cfg, SequentialConfig) else run_certify

    def check(old: dict, where: str) -> None:
        was = str(old.get("device_type") or "").split(":")[0] or None
        if was is not None and was != dev.type:
            raise UsageError(f"{where} was computed on {was}, this run is on {dev.type}: their noise streams "
                             f"differ, so the rows cannot be combined; run on {was} or use --force to start over")

    def open_run(resume_: bool, force_: bool) -> TableRun:
        return TableRun(out, "certify", cfg.as_dict(), ids=data.idx.tolist(), chunk_size=size, prov=prov,
                        resume=resume_, force=force_, free_keys=("batch", "compile"), check=check,
                        row_keys=("sigma",))

    def compute(run: TableRun, chunks, prog) -> None:
        if not chunks:
            return
        runner(net, data, cfg, device=dev, progress=prog, blocks=[list(c.positions) for c in chunks],
               on_block=lambda i, df: run.write(chunks[i], df))

    df, run = run_table(out, open_run, compute, world=world, resume=resume, force=force, progress=progress,
                        desc=cfg.mode)
    return CertifyResult(df, out, parts_path(out), complete=bool(run is not None and run.already), world=world)


__all__ = ["CertifyResult", "certify_table", "chunk_size"]
