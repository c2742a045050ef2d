"""Cohen et al.'s certification logs: import (known answers, every malformed case), report on a .tsv directly,
compose/partition on an imported table, export (report --format cohen-tsv) and the round trip."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from robcli.errors import TableError, UsageError
from robcli.tables.cohen import (
    cohen_log_text,
    import_cohen_log,
    is_cohen_log,
    max_radius,
    plan_cohen_export,
    read_cohen_log,
)
from robcli.tables.io import read_table, write_table

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"
# sigma = 0.5, N = 100000, alpha = 0.001: radii up to 1.906.  By hand:
#   correct: 0 1 2 5 6 9; abstain: 3 7; wrong but certified: 4 (r 0.6), 8 (r 0.05)
#   acc@0 = 6/10, acc@0.25 = 5/10 (0 1 2 6 9), acc@0.5 = 4/10 (0 1 6 9), acc@1 = 2/10 (0 9), acc@1.5 = 1/10 (9)
#   inacc@0 = 2/10 (4 8), inacc@0.5 = 1/10 (4), inacc@1 = 0
ROWS = [
    (0, 0, 0, "1.2", 1, "15.4"),
    (1, 1, 1, "0.8", 1, "0:00:15.600000"),
    (2, 2, 2, "0.3", 1, "15.7"),
    (3, 0, -1, "0.0", 0, "16"),
    (4, 1, 2, "0.6", 0, "1 day, 0:00:01.5"),
    (5, 2, 2, "0.1", 1, "0.25"),
    (6, 0, 0, "0.55", 1, "1e-3"),
    (7, 1, -1, "0.0", 0, "3"),
    (8, 2, 0, "0.05", 0, "3"),
    (9, 0, 0, "1.9", 1, "3"),
]
SIGMA = 0.5


def _log(path: Path, rows=ROWS, header=HEADER) -> Path:
    body = "".join("\t".join(str(v) for v in r) + "\n" for r in rows)
    path.write_text(header + "\n" + body)
    return path


@pytest.fixture
def log(tmp_path):
    return _log(tmp_path / "sigma_0.50")


def test_import_records_declared_parameters_and_reconstructs_pA(log, tmp_path):
    out = import_cohen_log(log, tmp_path / "cert.parquet", sigma=SIGMA, N=100_000, N0=100, alpha=0.001,
                           dataset="cifar10", split="test")
    t = read_table(out, "certify")
    df = t.df
    assert list(df["idx"]) == list(range(10)) and df["imported"].all() and (df["mode"] == "certify").all()
    assert (df["sigma"] == SIGMA).all() and (df["N"] == 100_000).all() and (df["N0"] == 100).all()
    assert (df["alpha"] == 0.001).all()
    # nA cannot be recovered from a rounded radius: empty (null), the column still integer-typed
    assert df["nA"].isna().all() and str(df["nA"].dtype) == "Int64"
    ab = df["predict"] == -1
    assert df.loc[ab, "pA_lower"].isna().all()
    np.testing.assert_allclose(df.loc[~ab, "pA_lower"], norm.cdf(df.loc[~ab, "radius"] / SIGMA))
    # the radius formula inverted: sigma * Phi^-1(pA_lower) gives the logged radius back
    np.testing.assert_allclose(SIGMA * norm.ppf(df.loc[~ab, "pA_lower"]), df.loc[~ab, "radius"], rtol=1e-9)
    assert list(df["time"]) == pytest.approx([15.4, 15.6, 15.7, 16, 86401.5, 0.25, 0.001, 3, 3, 3])
    src = t.config["imported_from"]
    assert src["sha256"] == hashlib.sha256(log.read_bytes()).hexdigest() and src["format"] == "cohen-tsv"
    assert src["rows"] == 10 and src["path"] == str(log)
    assert t.config["sigmas"] == [SIGMA] and t.config["N"] == 100_000 and t.config["alpha"] == 0.001
    assert t.meta["data"] == {"dataset": "cifar10", "split": "test", "imported": True}
    assert list(df["source_line"]) == list(range(2, 12))


def test_report_on_imported_table_and_on_the_log_directly(cli, log, tmp_path):
    out = import_cohen_log(log, tmp_path / "cert.parquet", sigma=SIGMA)
    radii = ["--radius", "0", "--radius", "0.25", "--radius", "0.5", "--radius", "1", "--radius", "1.5"]
    docs = []
    for args in ([out], [log, "--sigma", "0.5"]):
        r = cli("report", *args, *radii, "--format", "json")
        assert r.exit_code == 0, r.output
        import json

        docs.append(json.loads(r.stdout))
    for doc in docs:
        sec = {s["title"]: s["rows"] for s in doc["sections"]}
        row = next(v for k, v in sec.items() if "(Tables 2/3)" in k)[0]
        assert [row[f"acc@{r}"] for r in ("0", "0.25", "0.5", "1", "1.5")] == pytest.approx([0.6, 0.5, 0.4, 0.2, 0.1])
        assert [row[f"inacc@{r}"] for r in ("0", "0.5", "1")] == pytest.approx([0.2, 0.1, 0.0])
        assert row["n"] == 10 and row["sigma"] == 0.5 and "(imported)" in row["model"]
        # n = 10, alpha = 0.001, rho = 0.001: P(Bin(10, 0.001) >= 2) = 4.5e-5 <= rho < P(>= 1): k = 1, bound acc - 0.1
        lb = next(v for k, v in sec.items() if "confidence statement" in k)[0]
        assert [lb[f"acc_lb@{r}"] for r in ("0", "0.25", "1.5")] == pytest.approx([0.5, 0.4, 0.0])
    assert docs[0]["sections"][0]["rows"][0]["model"] == "cert (imported)"
    assert docs[1]["sections"][0]["rows"][0]["model"] == "sigma_0.50 (imported)"


def test_report_on_a_log_needs_its_sigma(cli, log, tmp_path):
    r = cli("report", log)
    assert r.exit_code == 2 and "--sigma" in r.output and "Traceback" not in r.output
    r = cli("report", log, log, "--sigma", "0.5", "--sigma", "0.25", "--sigma", "1")
    assert r.exit_code == 2 and "3 --sigma values for 2" in r.output
    other = write_table(pd.DataFrame({"idx": [0], "label": [0], "split": ["robust_accurate"]}),
                        tmp_path / "p.parquet", "partition")
    r = cli("report", other, "--sigma", "0.5")
    assert r.exit_code == 2 and "none of the inputs" in r.output


def test_a_log_given_where_a_table_is_expected_says_what_it_is(cli, log, tmp_path):
    with pytest.raises(TableError, match="is a Cohen-format certification log, not a robcli table"):
        read_table(log)
    r = cli("partition", log, "--radius", "0.5")
    assert r.exit_code == 2 and "Cohen-format certification log" in r.output


def test_is_cohen_log(log, tmp_path):
    assert is_cohen_log(log)
    pq = import_cohen_log(log, tmp_path / "c.parquet", sigma=SIGMA)
    assert not is_cohen_log(pq) and not is_cohen_log(tmp_path) and not is_cohen_log(tmp_path / "nope")


BAD = [
    (lambda rows: rows, "idx\tlabel\tpredict\tcorrect\ttime", "line 1", "PREDICT log"),
    (lambda rows: rows, "idx\tlabel\tradius\tcorrect\ttime", "line 1", "lacks column(s) predict"),
    (lambda rows: [rows[0], (1, 1, "x", "0.8", 1, "1")] + rows[2:], HEADER, "line 3", "predict 'x' is not an integer"),
    (lambda rows: [rows[0], (1, 1, 1, "abc", 1, "1")] + rows[2:], HEADER, "line 3", "radius 'abc'"),
    (lambda rows: [rows[0], (1, 1, 1, "nan", 1, "1")] + rows[2:], HEADER, "line 3", "radius 'nan'"),
    (lambda rows: [rows[0], (1, 1, 1, "0.8", 1, "soon")] + rows[2:], HEADER, "line 3", "time 'soon'"),
    (lambda rows: [rows[0], (1, 1, 1, "0.8", 2, "1")] + rows[2:], HEADER, "line 3", "correct '2' is not 0 or 1"),
    (lambda rows: rows[:4] + [(4, 1, 2, "-0.1", 0, "1")] + rows[5:], HEADER, "line 6", "negative"),
    (lambda rows: rows[:5] + [(1, 2, 2, "0.1", 1, "1")] + rows[6:], HEADER, "line 7", "idx 1 repeats (first on line 3)"),
    (lambda rows: rows[:2] + [(2, 2, 2, "0.3", 0, "1")] + rows[3:], HEADER, "line 4", "disagrees with predict 2 == label 2"),
    (lambda rows: rows[:4] + [(4, 1, 2, "0.6", 1, "1")] + rows[5:], HEADER, "line 6", "disagrees with predict 2 != label 1"),
    (lambda rows: rows[:3] + [(3, 0, -1, "0.2", 0, "1")] + rows[4:], HEADER, "line 5", "on an abstention"),
    (lambda rows: rows[:3] + [(3, 0, -2, "0.0", 0, "1")] + rows[4:], HEADER, "line 5", "neither a class"),
    (lambda rows: rows[:3] + [(3, -1, 0, "0.2", 0, "1")] + rows[4:], HEADER, "line 5", "label -1 is negative"),
    (lambda rows: rows[:3] + [(3, 0, 0, "0.2", 1)] + rows[4:], HEADER, "line 5", "5 tab-separated field(s)"),
    (lambda rows: [], HEADER, "line 2", "no rows after the header"),
    # 1.92 > 1.906 = 0.5 * Phi^-1(0.001 ** 1e-5) even after its rounding (1.915): made with another alpha or N
    (lambda rows: rows[:9] + [(9, 0, 0, "1.92", 1, "3")], HEADER, "line 11", "exceeds the largest radius"),
]


@pytest.mark.parametrize("mutate,header,where,needle", BAD)
def test_malformed_logs_are_one_line_errors_naming_the_line(tmp_path, mutate, header, where, needle):
    p = _log(tmp_path / "bad.tsv", mutate(list(ROWS)), header)
    with pytest.raises(TableError) as e:
        read_cohen_log(p, sigma=SIGMA)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and where in msg and needle in msg, msg


def test_empty_file_not_text_parquet_and_cli_writes_nothing(cli, tmp_path, log):
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    with pytest.raises(TableError, match=r"empty\.tsv line 1: the file is empty"):
        read_cohen_log(empty, sigma=SIGMA)
    binary = tmp_path / "bin.tsv"
    binary.write_bytes(HEADER.encode() + b"\n\xff\xfe\n")
    with pytest.raises(TableError, match="line 2: not UTF-8"):
        read_cohen_log(binary, sigma=SIGMA)
    pq = import_cohen_log(log, tmp_path / "c.parquet", sigma=SIGMA)
    with pytest.raises(TableError, match="is a Parquet file"):
        read_cohen_log(pq, sigma=SIGMA)
    with pytest.raises(UsageError, match="--alpha"):
        read_cohen_log(log, sigma=SIGMA, alpha=1.5)
    bad = _log(tmp_path / "bad.tsv", ROWS[:3] + [(3, 0, -1, "0.2", 0, "1")])
    r = cli("report", bad, "--sigma", "0.5", "--out", tmp_path / "r.md")
    assert r.exit_code == 2 and "line 5" in r.output and not (tmp_path / "r.md").exists()
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1


def test_largest_radius_check_allows_the_printed_rounding_and_names_the_alpha(tmp_path):
    # all N votes on one class: 0.25 * Phi^-1(0.01 ** 1e-5) = 0.97763, printed "0.978" by the reference code
    assert max_radius(0.25, 100_000, 0.01) == pytest.approx(0.97763, abs=1e-5)
    p = _log(tmp_path / "l.tsv", [(0, 1, 1, "0.978", 1, "1"), (1, 0, 0, "0.3", 1, "1")])
    assert read_cohen_log(p, sigma=0.25, N=100_000, alpha=0.01).df["pA_lower"].max() <= 0.01 ** 1e-5
    with pytest.raises(TableError, match=r"line 2: radius 0.978 exceeds .* alpha=0.001 \(0.9529 .* needs alpha >= 0.0099,"):
        read_cohen_log(p, sigma=0.25, N=100_000, alpha=0.001)
    # the same radius written with more digits is not given the 3-digit slack
    q = _log(tmp_path / "q.tsv", [(0, 1, 1, "0.97770", 1, "1")])
    with pytest.raises(TableError, match="exceeds"):
        read_cohen_log(q, sigma=0.25, N=100_000, alpha=0.01)


def test_windows_line_ends_and_extra_columns_are_read(tmp_path):
    p = tmp_path / "w.tsv"
    p.write_bytes(b"idx\tlabel\tpredict\tradius\tcorrect\ttime\tnote\r\n0\t1\t1\t0.5\t1\t2.0\tx\r\n")
    df = read_cohen_log(p, sigma=SIGMA).df
    assert list(df["radius"]) == [0.5] and "note" not in df.columns


@pytest.fixture
def core_l2(tmp_path):
    """An L2 attack table of a core model on the same 10 examples (labels as in ROWS)."""
    label = np.array([r[1] for r in ROWS])
    pred = np.array([0, 1, 2, 0, 1, 0, 0, 1, 2, 1])  # right on 0-4 6-8
    robust = np.array([1, 0, 1, 1, 1, 0, 0, 1, 1, 1], bool)
    df = pd.DataFrame({"idx": np.arange(10), "label": label, "eps": 0.25, "norm": "L2", "attack": "apgd-ce",
                       "clean_pred": pred, "adv_pred": np.where(robust, pred, (pred + 1) % 3),
                       "correct": pred == label, "robust": robust, "clean_margin": 1.0,
                       "adv_margin": np.where(robust, 0.5, -0.5), "pert_norm": 0.25})
    return write_table(df, tmp_path / "core.parquet", "attack", prov={"models": [{"path": "runs/core", "sha256": "c"}]})


def _native(tmp_path) -> Path:
    """The same certificates as ROWS, in a table robcli itself wrote (nA recorded, no imported column)."""
    d = pd.DataFrame(ROWS, columns=["idx", "label", "predict", "radius", "correct", "time"])
    d["radius"] = d["radius"].astype(float)
    d["time"] = 1.0
    d["correct"] = d["predict"] == d["label"]
    d["sigma"], d["N0"], d["N"], d["alpha"], d["mode"] = SIGMA, 100, 100_000, 0.001, "certify"
    d["nA"] = 99_000
    d["pA_lower"] = np.where(d["predict"] == -1, 0.3, norm.cdf(d["radius"] / SIGMA))
    return write_table(d, tmp_path / "native.parquet", "certify", prov={"models": [{"path": "runs/s", "sha256": "s"}]})


def test_compose_and_partition_on_an_imported_table_equal_the_native_table(cli, log, core_l2, tmp_path):
    imp = import_cohen_log(log, tmp_path / "imp.parquet", sigma=SIGMA)
    nat = _native(tmp_path)
    comp = {}
    for name, t in (("imp", imp), ("nat", nat)):
        out = tmp_path / f"comp-{name}.parquet"
        r = cli("compose", "-r", t, "-c", core_l2, "--eps", "0.25", "--norm", "L2", "--out", out, "-q")
        assert r.exit_code == 0, r.output
        comp[name] = read_table(out, "compose").df
        part = tmp_path / f"part-{name}.parquet"
        r = cli("partition", t, "--radius", "0.5", "--out", part, "-q")
        assert r.exit_code == 0, r.output
        comp[name + "-part"] = read_table(part, "partition").df
    cols = ["nat_acc", "robust_acc", "robust_selection", "selected_robust_acc", "robust_inaccuracy"]
    pd.testing.assert_frame_equal(comp["imp"][cols], comp["nat"][cols])
    pd.testing.assert_frame_equal(comp["imp-part"][["idx", "label", "split"]], comp["nat-part"][["idx", "label", "split"]])
    # by hand at radius 0.5: robust (not abstained, r >= 0.5): 0 1 4 6 9; right: 0 1 2 5 6 9
    split = comp["imp-part"].set_index("idx")["split"]
    assert list(split[[0, 1, 6, 9]]) == ["robust_accurate"] * 4 and split[4] == "robust_inaccurate"
    assert list(split[[2, 5]]) == ["nonrobust_accurate"] * 2 and list(split[[3, 7, 8]]) == ["nonrobust_inaccurate"] * 3
    # the composition's selector: certified radius >= 2 * 0.25 selects 0 1 4 6 9 (5 of 10)
    assert comp["imp"]["robust_selection"].iloc[0] == pytest.approx(0.5)


def test_schema_keeps_nA_non_null_outside_imported_rows(tmp_path):
    d = read_cohen_log(_log(tmp_path / "l.tsv"), sigma=SIGMA).df
    d.loc[3, "imported"] = False
    with pytest.raises(TableError, match="nA.*not marked imported"):
        write_table(d, tmp_path / "x.parquet", "certify")
    with pytest.raises(TableError, match="nA.*not marked imported"):
        write_table(d.drop(columns="imported"), tmp_path / "x.parquet", "certify")
    # an ordinary table keeps plain int64 nA
    assert str(read_table(_native(tmp_path), "certify").df["nA"].dtype) == "int64"


def test_export_text_is_cohen_format_at_full_precision():
    d = pd.DataFrame({"idx": [2, 0, 1], "label": [1, 0, 2], "predict": [1, -1, 0], "radius": [0.2496, 0.0, 1 / 3],
                      "correct": [True, False, False], "time": [1.5, 2.0, 0.25], "sigma": 0.25, "mode": "certify"})
    lines = cohen_log_text(d).splitlines()
    assert lines[0] == HEADER
    # idx order; no rounding (0.2496 must not become 0.25 and count as certified at 0.25)
    assert lines[1:] == ["0\t0\t-1\t0.0\t0\t2", "1\t2\t0\t0.3333333333333333\t0\t0.25", "2\t1\t1\t0.2496\t1\t1.5"]
    p = d.assign(mode="predict")
    assert cohen_log_text(p).splitlines()[0] == "idx\tlabel\tpredict\tcorrect\ttime"
    with pytest.raises(TableError, match="one sigma"):
        cohen_log_text(pd.concat([d, d.assign(sigma=0.5)]))


def test_export_file_naming(tmp_path, log):
    from robcli.tables.io import Table

    def tab(path, sigmas):
        d = read_cohen_log(log, sigma=SIGMA).df
        return Table(df=pd.concat([d.assign(sigma=s) for s in sigmas]), kind="certify", path=str(path))

    one = tab(tmp_path / "a.parquet", [0.5])
    two = tab(tmp_path / "b.parquet", [0.25, 0.5])
    assert [p for p, _ in plan_cohen_export([one], tmp_path / "x.tsv")] == [tmp_path / "x.tsv"]
    assert [p.name for p, _ in plan_cohen_export([one, two], tmp_path / "logs")] == [
        "a_sigma_0.5.tsv", "b_sigma_0.25.tsv", "b_sigma_0.5.tsv"]
    with pytest.raises(UsageError, match="must be a folder"):
        plan_cohen_export([two], tmp_path / "x.tsv")
    assert [p.name for p, _ in plan_cohen_export([tab(tmp_path / "sigma_0.50", [0.5])], tmp_path / "o")] == [
        "sigma_0.50_sigma_0.5.tsv"]
    with pytest.raises(UsageError, match="give --out"):
        plan_cohen_export([one], None)
    with pytest.raises(UsageError, match="would both write"):
        plan_cohen_export([one, tab(tmp_path / "sub" / "a.parquet", [0.5])], tmp_path / "logs")
    with pytest.raises(UsageError, match="is a partition table"):
        plan_cohen_export([Table(df=pd.DataFrame(), kind="partition", path="p.parquet")], tmp_path / "logs")


def _linear_model():
    """A 2-D linear classifier, left (0) vs right (1) of x = 0.5 on the gaussians data: inputs near the boundary
    abstain, the small class (2) is certified wrong, the rest certified right (a mix the round trip must keep)."""
    import torch

    net = torch.nn.Linear(2, 3)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[-20.0, 0.0], [20.0, 0.0], [0.0, 0.0]]))
        net.bias.copy_(torch.tensor([10.0, -10.0, -100.0]))
    return net


def test_round_trip_robcli_to_cohen_tsv_to_import_keeps_certified_accuracies(cli, tmp_path):
    from robcli.certify.smoothing import CertifyConfig, run_certify
    from robcli.data.registry import load_split

    data = load_split("gaussians", "test").select(n_ex=40)
    cfg = CertifyConfig(sigmas=(0.12, 0.25), N0=20, N=500, alpha=0.01, seed=3)
    cert = write_table(run_certify(_linear_model(), data, cfg, device="cpu"), tmp_path / "cert.parquet",
                       "certify", config=cfg.as_dict())
    logs = tmp_path / "logs"
    r = cli("report", cert, "--format", "cohen-tsv", "--out", logs)
    assert r.exit_code == 0, r.output
    files = sorted(logs.iterdir())
    assert [f.name for f in files] == ["cert_sigma_0.12.tsv", "cert_sigma_0.25.tsv"]
    # the field's analyze.py reads it with pandas.read_csv(delimiter="\t")
    field = pd.read_csv(files[1], delimiter="\t")
    assert list(field.columns) == ["idx", "label", "predict", "radius", "correct", "time"] and len(field) == 40
    native = read_table(cert, "certify").df
    radii = [0.0, 0.05, 0.1, 0.2, 0.3, 0.5]
    from robcli.certify.smoothing import summarize

    want = summarize(native, radii=radii)
    got = pd.concat([summarize(read_cohen_log(f, sigma=s, N=500, N0=20, alpha=0.01).df, radii=radii)
                     for f, s in zip(files, (0.12, 0.25))], ignore_index=True)
    pd.testing.assert_frame_equal(got, want)
    # not a vacuous comparison: certified right, certified wrong and abstentions all occur
    assert want["certified_acc"].gt(0).any() and want["certified_robust_inacc"].gt(0).any()
    assert want["abstain"].gt(0).all() and want["certified_acc"].nunique() > 2
    # the reconstructed pA_lower is the certificate's own bound wherever it did not abstain
    back = read_cohen_log(files[1], sigma=0.25, N=500, N0=20, alpha=0.01).df.set_index("idx")
    nat = native[native["sigma"] == 0.25].set_index("idx")
    ok = nat["predict"] != -1
    np.testing.assert_allclose(back.loc[ok[ok].index, "pA_lower"], nat.loc[ok, "pA_lower"], rtol=1e-9)
    # and an existing file is not overwritten without --force
    r = cli("report", cert, "--format", "cohen-tsv", "--out", logs)
    assert r.exit_code == 2 and "exists" in r.output


# ------------------------------------------------------------ robcli certify --import ----------------------------


def test_certify_import_writes_the_library_table_with_provenance(cli, log, tmp_path):
    out = tmp_path / "cert.parquet"
    r = cli("certify", "--import", log, "--sigma", "0.5", "--N", "100000", "--N0", "100", "--alpha", "0.001",
            "--dataset", "cifar10", "--out", out)
    assert r.exit_code == 0, r.output
    assert "imported" in r.output and "sigma=0.5" in r.output
    t = read_table(out, "certify")
    lib = read_cohen_log(log, sigma=SIGMA, N=100_000, N0=100, alpha=0.001, dataset="cifar10", split="test").df
    pd.testing.assert_frame_equal(t.df.drop(columns=["time"]), lib.drop(columns=["time"]), check_dtype=False)
    assert t.config["imported_from"]["sha256"] == hashlib.sha256(log.read_bytes()).hexdigest()
    assert t.config["N"] == 100_000 and t.config["N0"] == 100 and t.config["alpha"] == 0.001
    assert t.df["imported"].all() and t.df["nA"].isna().all()
    assert t.meta["data"] == {"dataset": "cifar10", "split": "test", "imported": True}
    assert t.meta["command"][:2] == ["certify", "--import"]
    # declared other parameters are recorded as given
    out2 = tmp_path / "cert2.parquet"
    r = cli("certify", "--import", log, "--sigma", "0.5", "--N", "200000", "--N0", "64", "--alpha", "0.01",
            "--out", out2, "-q")
    assert r.exit_code == 0 and r.output == ""
    t2 = read_table(out2, "certify")
    assert (t2.df["N"] == 200_000).all() and (t2.df["N0"] == 64).all() and (t2.df["alpha"] == 0.01).all()
    assert t2.meta["data"] == {}  # no --dataset: nothing claimed about the data


@pytest.mark.parametrize("extra,needle", [
    (["--model", "runs/x"], "--model does not apply to --import"),
    (["--batch", "10", "--resume"], "--batch, --resume do not apply to --import"),
    (["--mode", "predict"], "--mode does not apply"),
    (["--seed", "0"], "--seed does not apply"),  # given explicitly, even at its default value
    (["--shard", "0/2", "--n-ex", "3"], "--n-ex, --shard do not apply"),
    (["--precision", "fp32", "--chunk", "4"], "--precision, --chunk do not apply"),
])
def test_certify_import_refuses_the_flags_of_a_certification_run(cli, one_line_error, log, tmp_path, extra, needle):
    out = tmp_path / "c.parquet"
    one_line_error(cli("certify", "--import", log, "--sigma", "0.5", "--out", out, *extra), needle)
    assert not out.exists()


def test_certify_import_usage_errors_are_one_line_and_write_nothing(cli, one_line_error, log, tmp_path):
    out = tmp_path / "c.parquet"

    def refused(r, needle):
        one_line_error(r, needle)
        assert not out.exists()

    refused(cli("certify", "--import", log, "--out", out), "give the --sigma it was certified with")
    refused(cli("certify", "--import", log, "--sigma", "0.5", "--sigma", "0.25", "--out", out), "one sigma")
    refused(cli("certify", "--import", log, "--sigma", "0.5", "--out", tmp_path / "c.csv"), ".parquet")
    refused(cli("certify", "--import", log, "--sigma", "0.5", "--dataset", "nope", "--out", out),
            "not a registered data set")
    refused(cli("certify", "--import", tmp_path / "missing.tsv", "--sigma", "0.5", "--out", out),
            "does not exist")
    refused(cli("certify", "--import", log, "--sigma", "0.5", "--alpha", "2", "--out", out), "--alpha")
    # a malformed log: the line is named
    bad = _log(tmp_path / "bad.tsv", ROWS[:5] + [(1, 2, 2, "0.1", 1, "1")] + ROWS[6:])
    refused(cli("certify", "--import", bad, "--sigma", "0.5", "--out", out), "line 7: idx 1 repeats")
    # without --import, certify still needs its model and data set
    refused(cli("certify", "--out", out), "missing option --model and --dataset")
    # an existing table is kept unless --force
    assert cli("certify", "--import", log, "--sigma", "0.5", "--out", out, "-q").exit_code == 0
    before = out.read_bytes()
    r = cli("certify", "--import", log, "--sigma", "1", "--out", out)
    assert r.exit_code == 2 and "--force" in r.output and out.read_bytes() == before
    assert cli("certify", "--import", log, "--sigma", "1", "--out", out, "--force", "-q").exit_code == 0
    assert (read_table(out, "certify").df["sigma"] == 1.0).all()


def test_report_compose_partition_on_a_cli_imported_table(cli, log, core_l2, tmp_path):
    imp = tmp_path / "imp.parquet"
    assert cli("certify", "--import", log, "--sigma", "0.5", "--out", imp, "-q").exit_code == 0
    r = cli("report", imp, "--radius", "0.5", "--format", "json")
    assert r.exit_code == 0, r.output
    import json

    row = next(s for s in json.loads(r.stdout)["sections"] if "(Tables 2/3)" in s["title"])["rows"][0]
    assert row["acc@0.5"] == pytest.approx(0.4) and row["inacc@0.5"] == pytest.approx(0.1)
    part = tmp_path / "part.parquet"
    assert cli("partition", imp, "--radius", "0.5", "--out", part, "-q").exit_code == 0
    split = read_table(part, "partition").df.set_index("idx")["split"]
    assert split[4] == "robust_inaccurate" and split[9] == "robust_accurate" and split[3] == "nonrobust_inaccurate"
    comp = tmp_path / "comp.parquet"
    r = cli("compose", "-r", imp, "-c", core_l2, "--eps", "0.25", "--norm", "L2", "--out", comp, "-q")
    assert r.exit_code == 0, r.output
    assert read_table(comp, "compose").df["robust_selection"].iloc[0] == pytest.approx(0.5)
