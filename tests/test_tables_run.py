"""The resumable table run (robcli/tables/run.py): chunk plan, parts, resume, checks, atomic finish."""

from __future__ import annotations

import pandas as pd
import pytest

from robcli.errors import TableError, UsageError
from robcli.tables.io import read_table
from robcli.tables.run import TableRun, execute, parts_path, plan_chunks

IDS = [3, 5, 8, 13, 21, 34, 55]


def _rows(ids):
    return pd.DataFrame({"idx": ids, "label": [0] * len(ids), "split": ["robust_accurate"] * len(ids)})


def _run(out, **kw):
    kw.setdefault("config", {"eps": 0.1, "batch": 2})
    return TableRun(out, "partition", kw.pop("config"), ids=kw.pop("ids", IDS), chunk_size=kw.pop("chunk_size", 3),
                    **kw)


def _work(run):
    return lambda c: _rows(run.ids[c.lo:c.hi])


def test_plan_covers_every_position_once():
    chunks = plan_chunks(7, 3)
    assert [(c.id, c.lo, c.hi) for c in chunks] == [(0, 0, 3), (1, 3, 6), (2, 6, 7)]
    assert plan_chunks(0, 3) == []
    with pytest.raises(ValueError):
        plan_chunks(3, 0)


def test_fresh_run_writes_parts_then_one_table(tmp_path):
    out = tmp_path / "t.parquet"
    run = _run(out, prov={"seed": 1})
    assert [c.id for c in run.pending()] == [0, 1, 2]
    execute(run, _work(run))
    assert parts_path(out).is_dir() and not out.exists()  # finish is the caller's step
    df = run.finish()
    assert not parts_path(out).exists()
    t = read_table(out, "partition")
    assert t.df["idx"].tolist() == IDS and df["idx"].tolist() == IDS
    assert t.config == {"eps": 0.1, "batch": 2} and t.meta["seed"] == 1


def test_existing_output_needs_resume_or_force(tmp_path):
    out = tmp_path / "t.parquet"
    run = _run(out)
    execute(run, _work(run))
    run.finish()
    with pytest.raises(UsageError, match="exists; pass --force to overwrite or --resume"):
        _run(out)
    again = _run(out, resume=True)
    assert again.complete and again.pending() == []
    assert again.finish()["idx"].tolist() == IDS
    with pytest.raises(UsageError, match=r"different configuration \(eps: 0.1 vs 0.2\)"):
        _run(out, resume=True, config={"eps": 0.2, "batch": 2})
    fresh = _run(out, force=True)
    assert not fresh.complete and len(fresh.pending()) == 3


def test_resume_continues_from_parts_and_checks_the_plan(tmp_path):
    out = tmp_path / "t.parquet"
    run = _run(out)
    calls = []

    def dying(c):
        calls.append(c.id)
        if c.id == 2:
            raise KeyboardInterrupt
        return _rows(run.ids[c.lo:c.hi])

    with pytest.raises(KeyboardInterrupt):
        execute(run, dying)
    assert sorted(p.name for p in parts_path(out).glob("chunk-*")) == ["chunk-000000.parquet", "chunk-000001.parquet"]
    with pytest.raises(UsageError, match="unfinished run"):
        _run(out)
    with pytest.raises(UsageError, match=r"different configuration \(eps"):
        _run(out, resume=True, config={"eps": 0.3, "batch": 2})
    # a key declared free (does not change results) may differ
    assert [c.id for c in _run(out, resume=True, config={"eps": 0.1, "batch": 9}, free_keys=("batch",)).pending()] == [2]
    with pytest.raises(UsageError, match="other examples or chunks"):
        _run(out, resume=True, ids=IDS[:-1])
    with pytest.raises(UsageError, match="other examples or chunks"):
        _run(out, resume=True, chunk_size=2)
    run2 = _run(out, resume=True)
    assert [c.id for c in run2.pending()] == [2]
    seen = []
    execute(run2, lambda c: seen.append(c.id) or _rows(run2.ids[c.lo:c.hi]))
    assert seen == [2]
    assert run2.finish()["idx"].tolist() == IDS


def test_specific_check_runs_before_the_generic_one(tmp_path):
    out = tmp_path / "t.parquet"
    run = _run(out)
    execute(run, _work(run), chunks=run.pending()[:1])

    def check(old, where):
        raise UsageError(f"{where}: custom refusal")

    with pytest.raises(UsageError, match="custom refusal"):
        _run(out, resume=True, check=check)


def test_failure_before_any_part_leaves_nothing(tmp_path):
    out = tmp_path / "t.parquet"
    run = _run(out)

    def bad(c):
        raise ValueError("model broke")

    with pytest.raises(ValueError):
        execute(run, bad)
    assert not parts_path(out).exists() and not out.exists()


def test_finish_refuses_missing_duplicate_or_foreign_rows(tmp_path):
    out = tmp_path / "t.parquet"
    run = _run(out)
    execute(run, _work(run), chunks=run.pending()[:2])
    with pytest.raises(TableError, match="lacks 1 of 3 chunks"):
        run.finish()
    with pytest.raises(RuntimeError, match="other examples than planned"):
        run.write(run.chunks[2], _rows([1, 2]))
    # a part that was tampered with (duplicated rows) is caught at the merge
    run.write(run.chunks[2], _rows(run.ids[6:7]))
    from robcli.tables.io import write_table

    write_table(_rows([3, 3, 5, 8]), parts_path(out) / "chunk-000000.parquet", "partition", config=run.config)
    with pytest.raises(TableError, match="twice"):
        run.finish()
    write_table(_rows([3, 5, 99]), parts_path(out) / "chunk-000000.parquet", "partition", config=run.config)
    with pytest.raises(TableError, match="example 99, which belongs to another chunk"):
        run.finish()
    assert not out.exists()


def test_rejects_non_parquet_out(tmp_path):
    with pytest.raises(UsageError, match="ending in .parquet"):
        _run(tmp_path / "t.csv")
