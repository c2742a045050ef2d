"""`robcli certify --sequential` end to end: flags, refusals, resume/shards/batch, and every consumer of its table."""

from __future__ import annotations

import pytest

COMMON = ["--model", "tiny_cnn", "--dataset", "digits", "--n-ex", "8", "--sigma", "0.25", "--N0", "20",
          "--N", "1000", "--alpha", "0.01", "--seed", "3", "--quiet"]
SEQ = ["--sequential", "--radius", "0.1", "--radius", "0.25"]


def _ok(r):
    assert r.exit_code == 0, r.output


def _drop_time(df):
    return df.drop(columns=["time"]).reset_index(drop=True)


def _with(argv, flag, value):
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


@pytest.fixture(scope="module")
def tables(cli, tmp_path_factory):
    """One fixed-N table and three sequential tables (targets, --against label, adaptive) of one model: a
    tiny_cnn trained 2 epochs with noise, so that examples are certified at 0, 1 or 2 radii, and wrongly too
    (an untrained model predicts one class everywhere, which would make every row alike)."""
    from robcli.train.config import FinetuneConfig
    from robcli.train.loop import finetune

    d = tmp_path_factory.mktemp("seqcli")
    res = finetune(FinetuneConfig(loss="noise", dataset="digits", out=str(d / "run"), model="tiny_cnn", sigma=0.25,
                                  epochs=2, lr=0.1, seed=0, device="cpu"))
    argv = _with(COMMON, "--model", str(res.run_dir))
    out = {"argv": argv}
    for name, extra in (("fixed", []), ("seq", SEQ), ("label", [*SEQ, "--against", "label"]),
                        ("adaptive", ["--sequential", "--radius-tol", "0.02"])):
        p = d / f"{name}.parquet"
        r = cli("certify", *argv, *extra, "--out", p)
        assert r.exit_code == 0, r.output
        out[name] = p
    return out


# ------------------------------------------------------------------------------------------ flags


@pytest.mark.parametrize("args, words", [
    (["--radius", "0.25"], ("--radius does not apply without --sequential",)),
    (["--radius-tol", "0.01"], ("--radius-tol does not apply without --sequential",)),
    (["--against", "label"], ("--against does not apply without --sequential",)),
    (["--against", "prediction"], ("--against does not apply without --sequential",)),
    (["--sequential", "--radius", "0"], ("--radius 0 must be > 0",)),
    (["--sequential", "--radius", "-0.5"], ("--radius -0.5 must be > 0",)),
    (["--sequential", "--radius-tol", "0"], ("--radius-tol 0 must be > 0",)),
    (["--sequential", "--radius-tol", "-0.1"], ("--radius-tol -0.1 must be > 0",)),
    (["--sequential", "--mode", "predict"], ("--mode predict has no sequential version",)),
    (["--sequential", "--against", "truth"], ("--against 'truth'",)),
    (["--sequential", "--radius", "0.25", "--radius-tol", "0.01"], ("adaptive mode's tolerance",)),
    (["--sequential", "--radius", "9"], ("out of reach",)),
])
def test_bad_combinations_are_one_line_errors_and_write_nothing(cli, one_line_error, tmp_path, args, words):
    from robcli.tables.run import parts_path

    out = tmp_path / "bad.parquet"
    one_line_error(cli("certify", *COMMON, *args, "--out", out), *words)
    assert not out.exists() and not parts_path(out).exists() and list(tmp_path.iterdir()) == []


def test_help_says_label_tables_measure_certified_accuracy(cli):
    import re

    r = cli("certify", "--help")
    _ok(r)
    text = re.sub(r"[\s│]+", " ", r.output)
    assert "CERTIFIED ACCURACY" in text and "does not certify unlabeled inputs" in text
    assert "the cap on estimation samples" in text


# ------------------------------------------------------------------------------------------ the table


def test_rows_and_columns(tables):
    import numpy as np

    from robcli.certify.bounds import ABSTAIN
    from robcli.tables.io import read_table

    fixed = read_table(tables["fixed"], "certify")
    for name in ("seq", "label", "adaptive"):
        t = read_table(tables[name], "certify")
        df = t.df
        assert len(df) == len(fixed.df) == 8 and set(fixed.df.columns) <= set(df.columns)
        assert (df["method"] == "sequential").all() and t.config["sequential"] is True
        assert (df["against"] == ("label" if name == "label" else "prediction")).all()
        assert t.config["against"] == df["against"].iloc[0]
        assert (df["cap"] == 1000).all() and (df["N"] <= 1000).all()
        assert (df["n_used"] == df["N0"] + df["N"]).all()
        assert (df["N0"] == (0 if name == "label" else 20)).all()
        for _, row in df.iterrows():
            got = list(row["certified_radii"])
            if name == "adaptive":
                assert got == ([row["radius"]] if row["radius"] > 0 else [])
            else:
                assert got == [r for r in (0.1, 0.25) if r <= row["radius"]]
                assert row["radius"] in (0.0, 0.1, 0.25)
            if not got:
                assert row["radius"] == 0.0 and row["predict"] == ABSTAIN
        if name == "label":  # only the label is tested: a certified prediction is the label
            cert = df["predict"] != ABSTAIN
            assert (df.loc[cert, "predict"] == df.loc[cert, "label"]).all()
        np.testing.assert_array_equal(df["idx"], fixed.df["idx"])
    assert "method" not in fixed.df.columns  # fixed-N tables are unchanged
    seq = read_table(tables["seq"], "certify").df
    assert seq["radius"].nunique() >= 2 and seq["n_used"].nunique() >= 2  # the rows are not all alike


def test_a_bad_against_value_in_a_table_is_refused(tmp_path, tables):
    from robcli.errors import TableError
    from robcli.tables.io import read_table, write_table

    t = read_table(tables["seq"], "certify")
    df = t.df.copy()
    df.loc[0, "against"] = "oracle"
    with pytest.raises(TableError, match="'against' holds 'oracle'"):
        write_table(df, tmp_path / "x.parquet", "certify", config=t.config)
    df = t.df.copy()
    df["certified_radii"] = "0.25"
    with pytest.raises(TableError, match="certified_radii"):
        write_table(df, tmp_path / "x.parquet", "certify", config=t.config)


# ------------------------------------------------------------------------------------------ consumers


def test_compose_partition_report_and_recipe_summaries_read_sequential_tables(cli, tables, tmp_path):
    from robcli.analysis.metrics import certify_view
    from robcli.recipes import summarize_certify_tables
    from robcli.tables.io import read_table

    seq = read_table(tables["seq"], "certify")
    # compose: the sequential table as selector and as core (the certified selector reads radius/predict)
    out = tmp_path / "comp.parquet"
    _ok(cli("compose", "-r", tables["seq"], "-c", tables["fixed"], "--eps", "0.05", "-o", out, "-q"))
    comp = read_table(out, "compose").df
    v = certify_view(seq, 0.1)  # --selection-check 2eps: robust selection at 2 * 0.05
    assert comp["robust_selection"].iloc[0] == pytest.approx(float(v.df["robust"].mean()))
    # partition --radius
    pout = tmp_path / "part.parquet"
    _ok(cli("partition", tables["seq"], "--radius", "0.25", "-o", pout))
    part = read_table(pout, "partition").df.set_index("idx").sort_index()
    s = seq.df.set_index("idx").sort_index()
    robust = (s["predict"] != -1) & (s["radius"] >= 0.25)
    assert list(part["split"].str.startswith("robust_")) == list(robust)
    # report: the method and mean samples per example next to the fixed-N table's
    rep = tmp_path / "r.md"
    _ok(cli("report", tables["fixed"], tables["seq"], tables["label"], tables["adaptive"], "-o", rep,
            "--format", "markdown"))
    text = rep.read_text()
    assert "samples/ex" in text and "fixed-N CERTIFY" in text
    assert "sequential(r=0.1,0.25, against prediction)" in text and "sequential(adaptive, against prediction)" in text
    assert "against label" in text
    lines = [ln.split("|")[1:-1] for ln in text.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in next(ln for ln in lines if ln[0].strip() == "model" and "samples/ex" in "".join(ln))]
    rows = {ln[head.index("method")].strip(): ln for ln in lines if len(ln) == len(head) and ln[0].strip() != "model"}
    got = {m: float(r[head.index("samples/ex")]) for m, r in rows.items()}
    assert got["fixed-N CERTIFY"] == 1020  # N0 + N
    for name, method in (("seq", "sequential(r=0.1,0.25, against prediction)"),
                         ("label", "sequential(r=0.1,0.25, against label)"),
                         ("adaptive", "sequential(adaptive, against prediction)")):
        want = read_table(tables[name], "certify").df["n_used"].mean()
        assert got[method] == pytest.approx(want, rel=5e-3), (method, got)
        assert got[method] < 1020
    # recipe summaries
    summ = summarize_certify_tables([{"label": "seq", "tables": str(tables["seq"])}], radii=[0.1, 0.25])
    for r in (0.1, 0.25):
        want = ((seq.df["predict"] == seq.df["label"]) & (seq.df["radius"] >= r)).mean()
        assert summ[summ["radius"] == r]["certified_acc"].iloc[0] == pytest.approx(want)


def test_compose_refuses_label_tables_as_selectors(cli, one_line_error, tables, tmp_path):
    from robcli.analysis.metrics import check_selector_table
    from robcli.tables.io import read_table

    out = tmp_path / "comp.parquet"
    one_line_error(cli("compose", "-r", tables["label"], "-c", tables["fixed"], "--eps", "0.05", "-o", out),
                    str(tables["label"]), "a selector cannot use labels")
    assert not out.exists()
    # negative control: the same rows recorded as --against prediction pass (the refusal is the label's doing)
    t = read_table(tables["label"], "certify")
    t.df["against"] = "prediction"
    t.meta["config"]["against"] = "prediction"
    check_selector_table(t)
    t.df.loc[0, "against"] = "label"  # one labelled row (e.g. a folder of shards) is enough to refuse
    with pytest.raises(Exception, match="cannot use labels"):
        check_selector_table(t)


# ------------------------------------------------------------------------------------------ reproducibility


def test_resume_after_kill_shards_and_batch_give_the_uninterrupted_table(cli, tables, tmp_path, monkeypatch):
    import pandas.testing as pdt

    import robcli.certify.sequential as sq
    from robcli.tables.io import read_table
    from robcli.tables.run import parts_path

    A = tables["argv"]
    full = read_table(tables["seq"], "certify").df
    # another --batch (pools of other sizes, blocks split across passes) gives the same table
    b = tmp_path / "b.parquet"
    _ok(cli("certify", *A, *SEQ, "--batch", "77", "--out", b))
    pdt.assert_frame_equal(_drop_time(read_table(b, "certify").df), _drop_time(full))
    # shards (chunks of 2 examples) with different batches merge to the full table
    sh = tmp_path / "sh.parquet"
    for i, batch in enumerate(("300", "1000")):
        _ok(cli("certify", *A, *SEQ, "--batch", batch, "--chunk", "2", "--shard", f"{i}/2", "--out", sh))
    _ok(cli("merge", parts_path(sh), "--out", sh))
    pdt.assert_frame_equal(_drop_time(read_table(sh, "certify").df), _drop_time(full))

    real = sq._Pool._finish
    n = {"rows": 0}

    def dying(self, sl):
        real(self, sl)
        n["rows"] += 1
        if n["rows"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(sq._Pool, "_finish", dying)
    out = tmp_path / "r.parquet"
    r = cli("certify", *A, *SEQ, "--chunk", "2", "--out", out)
    assert r.exit_code == 130 and not out.exists()
    assert len(read_table(parts_path(out) / "chunk-000000.parquet", "certify").df) == 2  # the finished chunk
    assert len(list(parts_path(out).glob("chunk-*"))) == 1
    monkeypatch.setattr(sq._Pool, "_finish", real)
    # a fixed-N run cannot continue a sequential run's parts, nor another radius list
    r = cli("certify", *A, "--chunk", "2", "--out", out, "--resume")
    assert r.exit_code == 2 and "different configuration" in r.output
    r = cli("certify", *_with(A, "--N", "2000"), *SEQ, "--chunk", "2", "--out", out, "--resume")
    assert r.exit_code == 2 and "different configuration" in r.output
    _ok(cli("certify", *A, *SEQ, "--batch", "123", "--chunk", "2", "--out", out, "--resume"))
    assert not parts_path(out).exists()
    pdt.assert_frame_equal(_drop_time(read_table(out, "certify").df), _drop_time(full))
