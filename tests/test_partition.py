"""robcli partition: four-way splits from attack/certify tables (paper A.9), index export, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robcli.tables.io import read_table, write_table

DATA = {"dataset": "digits", "split": "test", "n": 8}


def attack_rows(idx, label, pred, robust, eps, attack="apgd-ce", norm="Linf"):
    n = len(idx)
    pred = np.asarray(pred)
    robust = np.asarray(robust, bool)
    return pd.DataFrame({
        "idx": idx, "label": label, "eps": [eps] * n, "norm": [norm] * n, "attack": [attack] * n,
        "clean_pred": pred, "adv_pred": np.where(robust, pred, (pred + 1) % 10),
        "correct": pred == np.asarray(label), "robust": robust,
        "clean_margin": 1.0, "adv_margin": np.where(robust, 0.5, -0.5), "pert_norm": eps,
    })


def write_attack(path, frames, data=DATA, model="runs/m"):
    write_table(pd.concat(frames, ignore_index=True), path, "attack",
                prov={"data": data, "models": [{"path": model, "sha256": None}]})
    return path


IDX = list(range(8))
LABEL = [0, 1, 2, 3, 4, 5, 6, 7]
PRED = [0, 1, 2, 9, 9, 5, 9, 7]          # wrong at 3, 4, 6
ROB_APGD = [1, 1, 0, 1, 0, 0, 1, 1]
ROB_SQUARE = [1, 0, 0, 1, 0, 1, 1, 1]    # worst case: robust at 0, 3, 6, 7


@pytest.fixture
def table(tmp_path):
    e = 2 / 255
    return write_attack(tmp_path / "att.parquet", [
        attack_rows(IDX, LABEL, PRED, ROB_APGD, e, "apgd-ce"),
        attack_rows(IDX, LABEL, PRED, ROB_SQUARE, e, "square"),
        attack_rows(IDX, LABEL, PRED, [0] * 8, 4 / 255, "apgd-ce"),
    ])


def test_worst_case_partition_known_answer(cli, table, tmp_path):
    out = tmp_path / "part.parquet"
    r = cli("partition", table, "--eps", "2/255", "--out", out)
    assert r.exit_code == 0, r.output
    t = read_table(out, "partition")
    split = dict(zip(t.df["idx"], t.df["split"]))
    assert split == {0: "robust_accurate", 1: "nonrobust_accurate", 2: "nonrobust_accurate",
                     3: "robust_inaccurate", 4: "nonrobust_inaccurate", 5: "nonrobust_accurate",
                     6: "robust_inaccurate", 7: "robust_accurate"}
    assert "robust_inaccurate" in r.stdout and "25.00%" in r.stdout  # 2 of 8
    assert t.meta["data"]["dataset"] == "digits"


def test_single_attack_and_export(cli, table, tmp_path):
    lst = tmp_path / "ri.txt"
    r = cli("partition", table, "--eps", "0.00784313725490196", "--attack", "apgd-ce",
            "--export-split", "robust_inaccurate", "--export", lst, "-q")
    assert r.exit_code == 0, r.output
    lines = lst.read_text().splitlines()
    assert lines[0] == "# robcli index list: dataset=digits split=test"  # lets readers refuse another split's list
    assert lines[1:] == ["3", "6"]  # apgd-ce alone: robust at 0,1,3,6,7; wrong at 3,4,6


def test_export_list_is_read_by_select(table, tmp_path, cli):
    from robcli.data.registry import load_split

    lst = tmp_path / "na.txt"
    assert cli("partition", table, "--eps", "2/255", "--export-split", "nonrobust-accurate", "--export", lst).exit_code == 0
    ids = [int(s) for s in lst.read_text().splitlines() if not s.startswith("#")]
    sd = load_split("digits", "test").select(subset=ids)
    assert sorted(sd.idx.tolist()) == [1, 2, 5]


def test_certify_partition(cli, tmp_path):
    df = pd.DataFrame({
        "idx": [0, 1, 2, 3], "label": [0, 1, 2, 3], "predict": [0, 1, -1, 2], "radius": [0.5, 0.1, 0.0, 0.3],
        "time": 0.1, "sigma": 0.25, "N0": 100, "N": 1000, "alpha": 0.001, "nA": 900, "pA_lower": 0.9,
    })
    df["correct"] = df["predict"] == df["label"]
    p = write_table(df, tmp_path / "cert.parquet", "certify", prov={"data": DATA})
    out = tmp_path / "p.parquet"
    r = cli("partition", p, "--radius", "0.25", "--out", out, "--format", "json")
    assert r.exit_code == 0, r.output
    s = dict(zip(read_table(out).df["idx"], read_table(out).df["split"]))
    assert s == {0: "robust_accurate", 1: "nonrobust_accurate", 2: "nonrobust_inaccurate", 3: "robust_inaccurate"}


def _cert_table(tmp_path, name, radius, norm=None, radius_linf=None):
    df = pd.DataFrame({
        "idx": [0, 1, 2, 3], "label": [0, 1, 2, 3], "predict": [0, 1, 2, 3], "radius": radius,
        "time": 0.1, "sigma": 0.25, "N0": 100, "N": 1000, "alpha": 0.001, "nA": 900, "pA_lower": 0.9,
    })
    df["correct"] = df["predict"] == df["label"]
    if norm is not None:
        df["norm"] = norm
    if radius_linf is not None:
        df["radius_linf"] = radius_linf
    return read_table(write_table(df, tmp_path / f"{name}.parquet", "certify", prov={"data": DATA}), "certify")


def test_certify_view_reads_the_norm_column_and_converts_soundly(tmp_path):
    """Item 7b of issue 9: each row's radius is in its table's norm; L2 -> Linf divides by sqrt(d) (the
    radius_linf column), Linf -> L2 keeps the radius (the Linf ball contains the L2 ball of the same radius)."""
    from robcli.analysis.metrics import certify_view
    from robcli.errors import TableError

    def robust(t, r, norm):
        return certify_view(t, r, norm=norm).df["robust"].tolist()

    d = 64  # digits: an L2 radius r implies an Linf radius r / 8
    r = [0.8, 0.4, 0.1, 0.0]
    # Cohen's tables (no norm column): L2 radii, radius_linf = r / sqrt(d)
    cohen = _cert_table(tmp_path, "cohen", r, radius_linf=[v / np.sqrt(d) for v in r])
    assert robust(cohen, 0.3, "L2") == [True, True, False, False]
    assert robust(cohen, 0.06, "Linf") == [True, False, False, False]  # 0.8 / 8 = 0.1 >= 0.06; 0.4 / 8 < 0.06
    # Linf certificates (e.g. mix certify --method lipschitz --norm Linf): valid for Linf as they are ...
    linf = _cert_table(tmp_path, "linf", r, norm="Linf")
    assert robust(linf, 0.3, "Linf") == [True, True, False, False]
    # ... and for L2 as they are (an L2 question is never answered with a larger radius than certified)
    assert robust(linf, 0.3, "L2") == [True, True, False, False]
    # an Linf table that also carries radius_linf (= radius) reads the same; a wrongly L2-style radius_linf
    # in an Linf table is not used, the norm column decides
    linf2 = _cert_table(tmp_path, "linf2", r, norm="Linf", radius_linf=[v / np.sqrt(d) for v in r])
    assert robust(linf2, 0.3, "Linf") == [True, True, False, False]
    # L2 certificates with a norm column: an Linf question goes through radius_linf, never the raw radius
    l2 = _cert_table(tmp_path, "l2", r, norm="L2", radius_linf=[v / np.sqrt(d) for v in r])
    assert robust(l2, 0.3, "Linf") == [False, False, False, False]
    assert robust(l2, 0.3, "L2") == [True, True, False, False]
    with pytest.raises(TableError, match="radius_linf"):
        certify_view(_cert_table(tmp_path, "l2bare", r, norm="L2"), 0.05, norm="Linf")
    with pytest.raises(TableError, match="norm column"):
        certify_view(_cert_table(tmp_path, "bad", r, norm="L1"), 0.05, norm="L2")


def test_partition_of_linf_certificates_at_an_linf_radius(cli, tmp_path):
    t = _cert_table(tmp_path, "linf", [0.5, 0.1, 0.0, 0.3], norm="Linf")
    out = tmp_path / "p.parquet"
    r = cli("partition", t.path, "--radius", "0.25", "--norm", "Linf", "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    s = dict(zip(read_table(out).df["idx"], read_table(out).df["split"]))
    assert s == {0: "robust_accurate", 1: "nonrobust_accurate", 2: "nonrobust_accurate", 3: "robust_accurate"}


@pytest.mark.parametrize("args,needle", [
    (["--eps", "3/255"], "no rows at eps"),
    ([], "several eps"),
    (["--eps", "2/255", "--export-split", "robust_accurate"], "go together"),
    (["--eps", "2/255", "--export-split", "bogus", "--export", "X"], "unknown split"),
    (["--eps", "2/255", "--radius", "0.1"], "attack table"),
    (["--eps", "2/255", "--attack", "fab-t"], "no 'fab-t' rows"),
])
def test_bad_input_one_line_nothing_written(cli, one_line_error, table, tmp_path, args, needle):
    out = tmp_path / "o.parquet"
    args = [a if a != "X" else str(tmp_path / "x.txt") for a in args]
    one_line_error(cli("partition", table, *args, "--out", out), needle)
    assert not out.exists() and not (tmp_path / "x.txt").exists()


def test_wrong_kind(cli, tmp_path):
    df = pd.DataFrame({"idx": [0], "label": [1], "split": ["robust_accurate"]})
    p = write_table(df, tmp_path / "p.parquet", "partition")
    r = cli("partition", p)
    assert r.exit_code == 2 and "expected attack or certify" in r.stderr
