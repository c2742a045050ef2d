"""The report figure's layout logic (not pixels): one panel per (figure, data set, threat model, eps), a front per
panel, limits from the data, legends outside the axes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robcli.report.build import PANEL_KINDS, padded_limits, plot_panels, report_figure, short_eps
from robcli.report.render import Report
from robcli.tables.io import Table


def _att(model, ds, eps, acc, inacc, norm="Linf"):
    return {"model": model, "dataset": ds, "norm": norm, "eps": eps, "attacks": "apgd-ce", "n": 100, "nat_acc": 0.9,
            "robust_acc": acc, "robust_inaccuracy": inacc, "table": f"/t/{model}-{eps}.parquet"}


def _comp(table, ds, eps, selector="ri-empirical", **m):
    row = {"table": table, "dataset": ds, "selector": selector, "threshold": float("nan"), "norm": "Linf", "eps": eps,
           "core_model": "runs/std", "nat_acc": 0.9, "robust_acc": 0.5, "robust_selection": 0.6,
           "selected_robust_acc": 1.0, "robust_inaccuracy": 0.0, "core_nat_acc": 0.95, "core_robust_acc": 0.1}
    row.update(m)
    return row


def _sweep(eps):
    a = [0.0, 0.5, 1.0]
    return pd.DataFrame({"table": "mix", "dataset": "digits", "selector": "fixed-alpha", "threshold": a, "norm": "Linf",
                         "eps": eps, "nat_acc": [0.98, 0.95, 0.87], "robust_acc": [0.0, 0.3, 0.66],
                         "robust_selection": a, "selected_robust_acc": float("nan"), "robust_inaccuracy": 0.0,
                         "core_model": "runs/std"})


def _cert(path, ds, sigmas):
    rows = []
    for s in sigmas:
        rows.append(pd.DataFrame({"idx": range(4), "label": [0, 1, 2, 0], "predict": [0, 1, -1, 2],
                                  "radius": [s, 2 * s, 0, s], "sigma": s}))
    return Table(df=pd.concat(rows, ignore_index=True), kind="certify", meta={"data": {"dataset": ds}}, path=path)


@pytest.fixture
def data():
    att = [_att("std", "digits", 0.05, 0.3, 0.01), _att("era", "digits", 0.05, 0.8, 0.03),
           _att("std", "digits", 0.1, 0.05, 0.0), _att("era", "digits", 0.1, 0.6, 0.05),
           _att("mixnet", "digits", 0.2, 0.65, 0.02), _att("std", "gaussians", 0.05, 0.5, 0.1),
           _att("std", "digits", 0.5, 0.4, 0.1, norm="L2")]
    comp = [pd.DataFrame([_comp("c-era", "digits", 0.05), _comp("c-trades", "digits", 0.05, robust_selection=0.7)]),
            _sweep(0.2), pd.DataFrame([_comp("c-g", "gaussians", 0.05)])]
    return {"attack": att, "compose": comp,
            "certify": [_cert("/t/a.parquet", "digits", [0.12, 0.25]), _cert("/t/b.parquet", "digits", [0.25]),
                        _cert("/t/g.parquet", "gaussians", [0.5])], "pareto": None}


def test_one_models_panel_per_dataset_norm_and_eps(data):
    panels = [p for p in plot_panels(data) if p["kind"] == "models"]
    assert [p["group"] for p in panels] == [("digits", "L2", 0.5), ("digits", "Linf", 0.05), ("digits", "Linf", 0.1),
                                            ("digits", "Linf", 0.2), ("gaussians", "Linf", 0.05)]
    for p in panels:  # each panel holds exactly its group's models
        d = p["df"]
        assert set(zip(d["dataset"], d["norm"], d["eps"])) == {p["group"]}
    assert sorted(panels[1]["df"]["model"]) == ["era", "std"] and list(panels[3]["df"]["model"]) == ["mixnet"]
    assert "digits, Linf, eps = 0.05" in panels[1]["title"] and "Fig. 2" in panels[1]["title"]


def test_a_mixture_sweep_at_another_eps_gets_its_own_panel_and_no_abstain_panel(data):
    panels = plot_panels(data)
    comp = [p for p in panels if p["kind"] == "compositions"]
    assert [p["group"] for p in comp] == [("digits", "Linf", 0.05), ("digits", "Linf", 0.2), ("gaussians", "Linf", 0.05)]
    assert set(comp[0]["df"]["table"]) == {"c-era", "c-trades"} and set(comp[1]["df"]["selector"]) == {"fixed-alpha"}
    # abstain models: only where a selector selects (the fixed-alpha sweep has no selected robust accuracy)
    ab = [p for p in panels if p["kind"] == "abstain"]
    assert [p["group"] for p in ab] == [("digits", "Linf", 0.05), ("gaussians", "Linf", 0.05)]


def test_certified_panels_per_dataset_and_panel_order(data):
    panels = plot_panels(data)
    cert = [p for p in panels if p["kind"] == "certified"]
    assert [p["group"] for p in cert] == [("digits",), ("gaussians",)]
    assert [t.path for t in cert[0]["tables"]] == ["/t/a.parquet", "/t/b.parquet"]
    kinds = [p["kind"] for p in panels]
    assert kinds == sorted(kinds, key=PANEL_KINDS.index)


def test_pareto_panels_hold_their_own_front(data):
    pts = pd.DataFrame([
        {"dataset": "digits", "norm": "Linf", "eps": 0.05, "kind": "model", "name": "a", "nat_acc": 0.9, "robust_acc": 0.5},
        {"dataset": "digits", "norm": "Linf", "eps": 0.05, "kind": "model", "name": "b", "nat_acc": 0.8, "robust_acc": 0.4},
        {"dataset": "digits", "norm": "Linf", "eps": 0.1, "kind": "model", "name": "a", "nat_acc": 0.9, "robust_acc": 0.2}])
    front = pts.iloc[[0, 2]].reset_index(drop=True)
    data["pareto"] = {"points": pts, "front": front, "x": "nat_acc", "y": "robust_acc"}
    par = [p for p in plot_panels(data) if p["kind"] == "pareto"]
    assert [p["group"] for p in par] == [("digits", "Linf", 0.05), ("digits", "Linf", 0.1)]
    assert list(par[0]["front"]["name"]) == ["a"] and list(par[0]["df"]["name"]) == ["a", "b"]
    assert list(par[1]["front"]["eps"]) == [0.1]


def test_padded_limits_show_the_differences():
    assert padded_limits([40, 60]) == pytest.approx((38.4, 61.6))
    lo, hi = padded_limits([100, 100, 100])  # every point at 100 %: a narrow band, not 95..105
    assert 99 < lo < 100 < hi <= 100.25
    assert padded_limits([0.0, 0.5]) == pytest.approx((-0.25, 1.0))
    assert padded_limits([]) == (0.0, 100.0) and padded_limits([float("nan")]) == (0.0, 100.0)
    assert padded_limits([0, 100])[1] <= 104 and padded_limits([0, 100])[0] >= -4


def test_short_eps():
    assert [short_eps(e) for e in (2 / 255, 8 / 255, 0.05, 0.1, 0.2, 1.0, 0.5)] == [
        "2/255", "8/255", "0.05", "0.1", "0.2", "1", "0.5"]


def test_figure_rows_are_kinds_legends_outside_axes_and_limits_from_data(data):
    import matplotlib.pyplot as plt

    rep = Report(data=data)
    fig = report_figure(rep)
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        visible = [ax for ax in fig.axes if ax.get_visible()]
        assert len(visible) == len(plot_panels(data))
        for ax in visible:
            leg = ax.get_legend()
            assert leg is not None
            a, b = ax.get_window_extent(r), leg.get_window_extent(r)
            assert b.x0 >= a.x1  # beside the axes: it covers no point
        # the models panel at digits Linf 0.05: robust acc 30..80 % -> limits hug the data, not 0..100
        ax = next(a for a in visible if "eps = 0.05" in a.get_title() and "Fig. 2" in a.get_title()
                  and a.get_title().startswith("digits"))
        lo, hi = ax.get_ylim()
        assert 25 < lo < 30 and 80 < hi < 85
        # the abstain panel where every selected robust accuracy is 100 %
        ax = next(a for a in visible if "Fig. 3" in a.get_title() and a.get_title().startswith("digits"))
        lo, hi = ax.get_ylim()
        assert 99 < lo and hi <= 100.25
        assert not any(t.get_text() == "101" for t in ax.get_yticklabels())
        for ax in visible:  # no tick without a label on the padding past 0 % or 100 %
            for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
                texts = [t.get_text() for t in labels]
                assert texts and all(texts), (ax.get_title(), texts)
                assert all(0 <= float(t.replace("\u2212", "-")) <= 100 for t in texts if "Fig." in ax.get_title())
    finally:
        plt.close(fig)
    assert report_figure(Report(data={})) is None
    assert np.isfinite(padded_limits([1, 2])).all()
