"""robcli report: every format, the plots (Agg), the Fig. 1 region picture, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robcli.tables.io import write_table

sys.path.insert(0, str(Path(__file__).parent))
from test_compose import C_EPS, C_PRED, LABEL, R_2EPS, R_EPS, R_PRED, E, rows, write  # noqa: E402


@pytest.fixture
def tabs(tmp_path, cli):
    r = write(tmp_path / "r.parquet", [rows(LABEL, R_PRED, R_EPS, E), rows(LABEL, R_PRED, R_2EPS, 2 * E)], model="runs/era")
    c = write(tmp_path / "c.parquet", [rows(LABEL, C_PRED, C_EPS, E)], model="runs/std")
    comp = tmp_path / "comp.parquet"
    assert cli("compose", "-r", r, "-c", c, "--eps", "2/255", "--out", comp, "-q").exit_code == 0
    part = tmp_path / "part.parquet"
    assert cli("partition", r, "--eps", "2/255", "--out", part, "-q").exit_code == 0
    cert = pd.DataFrame({"idx": [0, 1, 2, 3], "label": [0, 1, 2, 0], "predict": [0, 1, -1, 2],
                         "radius": [0.5, 0.1, 0.0, 0.3], "time": 0.1, "sigma": 0.25, "N0": 100, "N": 1000,
                         "alpha": 0.001, "nA": 900, "pA_lower": 0.9})
    cert["correct"] = cert["predict"] == cert["label"]
    cp = write_table(cert, tmp_path / "cert.parquet", "certify")
    return [str(r), str(c), str(comp), str(part), str(cp)]


def test_markdown_to_stdout_has_paper_tables(cli, tabs):
    res = cli("report", *tabs)
    assert res.exit_code == 0, res.output
    md = res.stdout
    for title in ("(Table 1)", "(Tables 8-9)", "(Tables 4/6)", "(Tables 2/3)"):
        assert title in md
    # robust model at 2/255: nat acc 5/8 (R right at 0,1,2,5,7), robust acc 3/8 (0,1,2), robust inacc 1/8 (3)
    assert "| era | gaussians | Linf | 0.007843 | apgd-ce | 8 | 62.50 | 37.50 | 12.50 |" in md
    # certified at r=0.25: robust and right only idx 0 -> 25 %; robust and wrong idx 3 -> 25 %
    line = [ln for ln in md.splitlines() if ln.startswith("| cert")][0]
    assert "| 25.00 | 25.00 |" in line


def test_json_csv_latex(cli, tabs, tmp_path):
    res = cli("report", *tabs, "--format", "json")
    doc = json.loads(res.stdout)
    comp = [s for s in doc["sections"] if "Tables 4/6" in s["title"]][0]["rows"][0]
    assert comp["robust_acc"] == pytest.approx(3 / 8) and comp["delta_robust_acc"] == pytest.approx(-1 / 8)
    csv = cli("report", *tabs, "--format", "csv").stdout
    assert "nat_acc" in csv and "0.625" in csv
    tex = cli("report", *tabs, "--format", "latex", "--out", tmp_path / "r.tex")
    assert tex.exit_code == 0
    t = (tmp_path / "r.tex").read_text()
    assert "\\begin{tabular}" in t and "robust\\_inaccuracy" in t
    assert t.splitlines()[0].startswith("%") and "\\usepackage{booktabs}" in t.splitlines()[0]


def test_html_is_self_contained_and_plot_written(cli, tabs, tmp_path):
    png = tmp_path / "fig.png"
    out = tmp_path / "r.html"
    res = cli("report", *tabs, "--format", "html", "--out", out, "--plot", png)
    assert res.exit_code == 0, res.output
    h = out.read_text()
    assert "data:image/png;base64," in h and "<table>" in h and "http" not in h.replace("http-equiv", "")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_regions_plot_on_gaussians(cli, tmp_path):
    import torch

    from robcli.data.registry import load_split
    from robcli.models import build, make_card, save_run

    torch.manual_seed(0)
    save_run(tmp_path / "m", build("tiny_mlp", 3, (2,)), make_card("tiny_mlp", 3, (2,), dataset="gaussians"))
    sd = load_split("gaussians", "test").select(n_ex=40)
    lab = sd.y.numpy()
    rng = np.random.default_rng(0)
    f = rows(lab, rng.integers(0, 3, 40), rng.integers(0, 2, 40), E)
    f["idx"] = sd.idx.numpy()
    t = write(tmp_path / "a.parquet", [f])
    png = tmp_path / "regions.png"
    res = cli("report", t, "--regions", f"{tmp_path / 'm'}={t}", "--plot-regions", png)
    assert res.exit_code == 0, res.output
    assert png.stat().st_size > 5000


@pytest.mark.parametrize("args,needle", [
    (["--format", "docx"], "unknown --format"),
    (["--plot", "x.pdf"], ".png or .svg"),
    (["--plot-regions", "x.png"], "needs at least one --regions"),
    (["--regions", "nope"], "RUN_DIR=TABLE"),
])
def test_bad_input(cli, tabs, tmp_path, args, needle):
    res = cli("report", *tabs, *args, "--out", tmp_path / "o.md")
    assert res.exit_code == 2 and needle in res.stderr
    assert not (tmp_path / "o.md").exists()


def test_missing_table(cli, tmp_path):
    res = cli("report", tmp_path / "nope.parquet")
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_certified_selector_table_3_known_answer(cli, tabs):
    """Robust selection (radius >= r, not abstained) and accuracy among the selected, per radius."""
    doc = json.loads(cli("report", tabs[-1], "--format", "json", "--radius", "0", "--radius", "0.25",
                         "--radius", "0.75").stdout)
    row = [s for s in doc["sections"] if "(Table 3)" in s["title"]][0]["rows"][0]
    # predict [0, 1, -1, 2], label [0, 1, 2, 0], radius [.5, .1, 0, .3]
    assert row["sel@0"] == pytest.approx(3 / 4) and row["selacc@0"] == pytest.approx(2 / 3)
    assert row["sel@0.25"] == pytest.approx(2 / 4) and row["selacc@0.25"] == pytest.approx(1 / 2)
    assert row["sel@0.75"] == 0.0 and row["selacc@0.75"] is None


@pytest.fixture
def many(tmp_path, cli, tabs):
    """tabs plus tables on digits whose points would dominate or be dominated if fronts mixed data sets."""
    dig = {"dataset": "digits", "split": "test"}
    cd = write(tmp_path / "c_dig.parquet", [rows(LABEL, [0] * 8, [1] * 8, E)], data=dig, model="runs/dig")
    rd = write(tmp_path / "r_dig.parquet", [rows(LABEL, R_PRED, R_EPS, E), rows(LABEL, R_PRED, R_2EPS, 2 * E)], data=dig,
               model="runs/rdig")
    cw = write(tmp_path / "cw_dig.parquet", [rows(LABEL, [1] * 8, [0] * 8, E)], data=dig, model="runs/wrong")
    comp = tmp_path / "comp_dig.parquet"
    assert cli("compose", "-r", rd, "-c", cw, "--eps", "2/255", "--out", comp, "-q").exit_code == 0
    return tabs[:3] + [cd, str(comp)]


def test_pareto_front_section_per_dataset_and_threat_model(cli, many):
    res = cli("report", *many, "--pareto", "robust_acc,robust_inaccuracy", "--format", "json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    sec = [s for s in doc["sections"] if s["title"].startswith("Pareto front: robust_acc vs robust_inaccuracy")][0]
    assert "robust_acc: higher is better" in sec["note"] and "robust_inaccuracy: lower is better" in sec["note"]
    got = {(r["dataset"], round(r["eps"] * 255, 3), r["kind"], r["name"]) for r in sec["rows"]}
    # gaussians 2/255: std (robust acc 4/8, inacc 1/8) dominates era (3/8, 1/8) and the composition (3/8, 2/8);
    # gaussians 4/255: era alone; digits 2/255: the robust+right core model (8/8, 0) alone
    assert got == {("gaussians", 2.0, "model", "std"), ("gaussians", 4.0, "model", "era"),
                   ("digits", 2.0, "model", "dig")}
    # compositions' pareto flag (nat_acc, robust_acc) is per data set too: the digits composition is worse than
    # the gaussians one on both metrics but alone in its group
    comp = [s for s in doc["sections"] if "(Tables 4/6)" in s["title"]][0]["rows"]
    assert sorted((r["dataset"], r["pareto"]) for r in comp) == [("digits", True), ("gaussians", True)]
    assert {r["dataset"] for r in [s for s in doc["sections"] if "(Table 1)" in s["title"]][0]["rows"]} == {"gaussians", "digits"}


def test_pareto_on_composition_metrics_and_plot_panel(cli, many, tmp_path):
    import matplotlib.pyplot as plt

    res = cli("report", *many, "--pareto", "nat_acc,robust_acc")
    assert res.exit_code == 0 and "## Pareto front: nat_acc vs robust_acc" in res.stdout
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert cli("report", *many, "--plot", a, "--out", tmp_path / "a.md").exit_code == 0
    assert cli("report", *many, "--plot", b, "--pareto", "robust_selection,selected_robust_acc",
               "--out", tmp_path / "b.md").exit_code == 0
    ha, hb = plt.imread(a).shape[0], plt.imread(b).shape[0]
    assert hb > ha * 1.1  # one more row of panels (the --pareto fronts)


@pytest.mark.parametrize("spec,needle", [
    ("robust_acc,bogus", "unknown metric 'bogus'; valid: nat_acc (higher is better)"),
    ("robust_acc", "must name two metrics"),
    ("robust_acc,robust_acc", "same metric twice"),
])
def test_pareto_bad_metric(cli, one_line_error, tabs, tmp_path, spec, needle):
    res = cli("report", *tabs, "--pareto", spec, "--out", tmp_path / "o.md")
    one_line_error(res, needle)
    assert "robust_inaccuracy (lower is better)" in res.stderr or "valid" not in needle
    assert not (tmp_path / "o.md").exists()
