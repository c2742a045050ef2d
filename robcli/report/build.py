"""Collect robcli tables (files, shard folders or run dirs) into paper-style report sections and figures.

* attack tables     -> Table 1: nat. accuracy, robust accuracy, robust inaccuracy per model and threat model
* partition tables  -> Tables 8/9: relative split sizes
* compose tables    -> Tables 4/6: composition vs core model (with deltas), Pareto flags
* certify tables    -> Tables 2/3: certified accuracy and robust inaccuracy at radii; robust selection and
                       selected robust accuracy of the certified robustness-indicator selector (Table 3)
* ``pareto=(X, Y)``  -> the non-dominated points on two metrics, per (dataset, norm, eps)
Every paper table carries a ``dataset`` column (from the table metadata).
* train logs        -> last epoch of each run
"""

from __future__ import annotations

import io
from pathlib import Path

from robcli.analysis.certified import DEFAULT_RHO
from robcli.errors import TableError
from robcli.report.render import Report, Section

DEFAULT_RADII = (0.0, 0.12, 0.25, 0.5, 0.75, 1.0)


def confidence_note(rho: float) -> str:
    """What the acc_lb@r columns claim (one sentence per point, for the report)."""
    return (f"With probability at least 1 - rho = {1 - rho:g} over the certification noise, the smoothed classifier is "
            "right and certified-robust at r on at least a fraction acc_lb@r of these n examples, at every r of the "
            "row at once: acc@r - k/n, where k is the (1 - rho) quantile of Binomial(n, alpha), because each of the "
            "n certificates is false with probability at most alpha, independently (Cohen et al. 2019, App.; exact "
            "binomial instead of their Bernstein-style formula, which can overstate the bound when n*alpha is "
            "large). About these n test examples, per table and sigma; clipped at 0.")


def collect(paths, logs: dict | None = None) -> list:
    """Read every table named (a run dir contributes every robcli table inside it).

    Cohen-format certification logs (:mod:`robcli.tables.cohen`) are read as certify tables with the parameters
    ``logs[path]`` declares (the keyword arguments of :func:`robcli.tables.cohen.read_cohen_log`).

    Raises:
        TableError: a missing or unreadable table.
        UsageError: a Cohen-format log without declared parameters.
    """
    from robcli.errors import UsageError
    from robcli.tables.cohen import cohen_table, is_cohen_log
    from robcli.tables.io import read_table

    logs = {str(k): v for k, v in (logs or {}).items()}
    tables = []
    for p in map(Path, paths):
        if not p.exists():
            raise TableError(f"{p} does not exist")
        if p.is_dir() and (p / "card.json").exists():  # a run dir: every table inside
            files = sorted(p.rglob("*.parquet"))
            if not files:
                raise TableError(f"run dir {p} holds no tables")
            tables += [read_table(f) for f in files if not f.name.startswith(".")]
        elif p.is_file() and is_cohen_log(p):
            if str(p) not in logs:
                raise UsageError(f"{p} is a Cohen-format log, which does not record its parameters: give --sigma "
                                 "(and --N, --N0, --alpha when not 100000, 100, 0.001)")
            tables.append(cohen_table(p, **logs[str(p)]))
        else:
            tables.append(read_table(p))
    return tables


def cohen_log_inputs(paths) -> list[str]:
    """The inputs among ``paths`` that are Cohen-format logs (to pair them with declared parameters)."""
    from robcli.tables.cohen import is_cohen_log

    return [str(p) for p in paths if Path(p).is_file() and is_cohen_log(p)]


def _imported(t) -> bool:
    return bool(isinstance(t.config, dict) and t.config.get("imported_from"))


def _model_label(t) -> str:
    from robcli.analysis.metrics import certificate_of, certified_model_name

    name = certified_model_name(t, display=model_display_name)
    if name is not None:  # a mixture certificate: name the mixture, not its robust member
        return name + (" [ESTIMATE]" if certificate_of(t)[1] else "")
    models = t.meta.get("models") or []
    if models and isinstance(models[0], dict) and models[0].get("path"):
        return model_display_name(str(models[0]["path"]))
    name = Path(t.path).name
    for suffix in (".parquet", ".tsv", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    # an imported Cohen-format log (a .tsv read directly, or its imported table) says so
    return f"{name} (imported)" if _imported(t) else name


def model_display_name(path: str) -> str:
    """A short, readable model name: the run directory's name for run-dir weights, else the file name."""
    p = Path(path)
    if p.name in ("model.safetensors", "last.safetensors", "card.json") and p.parent.name:
        return p.parent.name
    return p.name or str(path)


def _dataset(t) -> str:
    """The data set a table ran on (its provenance metadata), or "" when not recorded."""
    d = t.meta.get("data") or {}
    return str(d.get("dataset") or "") if isinstance(d, dict) else ""


GROUP = ["dataset", "norm", "eps"]  # fronts only compare points of one data set and threat model


def grouped_pareto_mask(d, x: str, y: str):
    """Pareto mask of ``d`` on (x, y), computed separately within each (dataset, norm, eps) group."""
    import numpy as np

    from robcli.analysis.pareto import MINIMIZE, pareto_mask

    keys = [k for k in GROUP if k in d.columns]
    mask = np.zeros(len(d), dtype=bool)
    if not len(d):
        return mask
    groups = d.groupby(keys, dropna=False, sort=False).indices if keys else {(): np.arange(len(d))}
    for pos in groups.values():
        g = d.iloc[pos]
        mask[pos] = pareto_mask(g[x].to_numpy(float), g[y].to_numpy(float),
                                maximize_x=x not in MINIMIZE, maximize_y=y not in MINIMIZE)
    return mask


def _eps_round(e) -> float:
    return float(f"{float(e):.6g}")


def _certify_method(t, g) -> tuple[str, float]:
    """How a certify table's rows were computed, and the mean noise samples drawn per example (``g``: one sigma).

    Sequential tables (``certify --sequential``) record ``n_used`` (selection + estimation samples) per row;
    for the others every example draws N0 + N (as recorded; mixture certificates without smoothing record 0).
    """
    if "method" in g.columns and (g["method"].astype(str) == "sequential").all() and "n_used" in g.columns:
        against = str(g["against"].iloc[0]) if "against" in g.columns and len(g) else "prediction"
        radii = (t.config or {}).get("radii")
        what = f"sequential({'adaptive' if not radii else 'r=' + ','.join(f'{float(r):g}' for r in radii)}, " \
               f"against {against})"
        return what, float(g["n_used"].mean()) if len(g) else float("nan")
    if "mode" in g.columns and len(g) and (g["mode"].astype(str) == "predict").all():
        what = "fixed-N PREDICT"
    elif "certified_model" in g.columns:
        what = "mixture certificate"
    else:
        what = "fixed-N CERTIFY"
    if not len(g) or not {"N0", "N"} <= set(g.columns):
        return what, float("nan")
    return what, float((g["N0"] + g["N"]).mean())


def certify_alpha(g) -> float:
    """The alpha of a (table, sigma) group's certificates: the largest when rows differ (the conservative one)."""
    return float(g["alpha"].max())


def build_report(tables, radii=DEFAULT_RADII, pareto: tuple[str, str] | None = None,
                 rho: float = DEFAULT_RHO) -> Report:
    """Paper-style sections from the tables; ``pareto=(X, Y)`` adds a Pareto-front section on those metrics.

    Certify tables also get a section with the ``1 - rho`` lower confidence bound on each certified accuracy
    (:mod:`robcli.analysis.certified`, the exact binomial bound).
    """
    import pandas as pd

    from robcli.analysis.certified import certified_accuracy_lower, check_rho
    from robcli.analysis.metrics import attack_view, available_eps, certificate_of, certify_view, summarize
    from robcli.analysis.partition import split_summary

    rho = check_rho(rho)
    rep = Report()
    estimates = False  # a certify table of radius estimates contributed rows (labelled [ESTIMATE])
    att, part, comp, cert, cert_sel, cert_lb, logs = [], [], [], [], [], [], []
    for t in tables:
        ds = _dataset(t)
        if t.kind == "attack":
            for norm in sorted(t.df["norm"].unique()):
                for e in available_eps(t.df[t.df["norm"] == norm]):
                    v = attack_view(t, e, norm=norm)
                    s = summarize(v)
                    att.append({"model": _model_label(t), "dataset": ds, "norm": norm, "eps": e,
                                "attacks": "+".join(v.attacks), "n": s["n"], "nat_acc": s["nat_acc"],
                                "robust_acc": s["robust_acc"], "robust_inaccuracy": s["robust_inaccuracy"],
                                "table": t.path})
        elif t.kind == "partition":
            s = split_summary(t.df)
            row = {"model": _model_label(t), "dataset": ds,
                   "eps": float(t.df["eps"].iloc[0]) if "eps" in t.df else float("nan"), "n": len(t.df)}
            row.update({k: v["fraction"] for k, v in s.items()})
            part.append(row)
        elif t.kind == "compose":
            d = t.df.copy()
            d.insert(0, "table", Path(t.path).stem)
            d.insert(1, "dataset", ds)
            comp.append(d)
        elif t.kind == "certify":
            estimates = estimates or certificate_of(t)[1]
            for sg in sorted(t.df["sigma"].unique()):
                g = t.df[t.df["sigma"] == sg]
                row = {"model": _model_label(t), "dataset": ds, "sigma": float(sg), "n": len(g)}
                srow = dict(row)
                row["method"], row["samples/ex"] = _certify_method(t, g)
                alpha = certify_alpha(g)
                lrow = {**row, "alpha": alpha}
                for r in radii:
                    # refuses mixture-with-smoothed-h tables; estimates pass, labelled [ESTIMATE] by _model_label
                    v = certify_view(t, r, sigma=float(sg), allow_estimate=True)
                    s = summarize(v)
                    row[f"acc@{r:g}"] = s["robust_acc"]
                    row[f"inacc@{r:g}"] = s["robust_inaccuracy"]
                    lrow[f"acc@{r:g}"] = s["robust_acc"]
                    lrow[f"acc_lb@{r:g}"] = certified_accuracy_lower(s["robust_acc"], len(g), alpha, rho)
                    sel = v.df["robust"]  # not abstained and certified radius >= r: the selector selects
                    srow[f"sel@{r:g}"] = float(sel.mean()) if len(g) else float("nan")
                    srow[f"selacc@{r:g}"] = float(v.df["correct"][sel].mean()) if sel.any() else float("nan")
                cert.append(row)
                cert_sel.append(srow)
                if not certificate_of(t)[1]:  # radius estimates carry no per-example failure probability
                    cert_lb.append(lrow)
        elif t.kind == "train_log":
            last = t.df.iloc[-1].to_dict()
            last = {"run": Path(t.path).parent.name, **last}
            logs.append(last)
    if att:
        rep.sections.append(Section("Robust accuracy and robust inaccuracy per model and threat model (Table 1)",
                                    pd.DataFrame(att), "Worst case over the attacks run at each eps (eq. 2, 3)."))
    if part:
        rep.sections.append(Section("Robustness/accuracy splits (Tables 8-9)", pd.DataFrame(part)))
    if comp:
        d = pd.concat(comp, ignore_index=True)
        keep = [c for c in ("table", "dataset", "selector", "threshold", "norm", "eps", "robust_models", "core_model",
                            "nat_acc", "delta_nat_acc", "robust_acc", "delta_robust_acc", "robust_selection",
                            "selected_robust_acc", "robust_inaccuracy", "core_nat_acc", "core_robust_acc") if c in d]
        d = d[keep].copy()
        d["pareto"] = grouped_pareto_mask(d.assign(eps=d["eps"].map(_eps_round)), "nat_acc", "robust_acc")
        rep.sections.append(Section("Compositions against the core model alone (Tables 4/6)", d,
                                    "Sound rule: see `robcli compose --help`; deltas are against the core model; "
                                    "pareto: non-dominated on (nat_acc, robust_acc) within one data set and threat model."))
    if cert:
        seq_note = (" samples/ex: mean noise samples drawn per example (fixed-N: N0 + N; sequential: the selection "
                    "and estimation samples it used, n_used). With --against label the table measures certified "
                    "accuracy; inacc@r is then 0 by construction (wrong predictions are never tested).")
        est_note = (" Rows marked [ESTIMATE] are built on radius estimates (certify --method mix-local-estimate, the adaptive-smoothing paper's App. C.3), "
                    "not certificates: their numbers are estimates." if estimates else "")
        rep.sections.append(Section("Certified accuracy (acc@r) and certified robust inaccuracy (inacc@r) at L2 radii (Tables 2/3)",
                                    pd.DataFrame(cert), (est_note + seq_note).strip()))
        rep.sections.append(Section(
            "Certified robustness-indicator selector: robust selection (sel@r) and selected robust accuracy (selacc@r) (Table 3)",
            pd.DataFrame(cert_sel),
            "sel@r: fraction of examples with certified radius >= r (not abstained); selacc@r: accuracy among them. "
            "For a composition at threat radius eps the sound robust selection is sel@(2*eps) (compose's default "
            "--selection-check 2eps); the paper's criterion is sel@eps." + est_note))
    if cert_lb:
        rep.sections.append(Section(
            f"Certified accuracy with a confidence statement (rho = {rho:g}): acc_lb@r <= true certified accuracy "
            f"with probability >= {1 - rho:g}",
            pd.DataFrame(cert_lb), confidence_note(rho) + (
                " Tables of radius estimates are left out: an estimate has no failure probability alpha to "
                "bound." if estimates else "")))
    if logs:
        rep.sections.append(Section("Training runs (last epoch)", pd.DataFrame(logs)))
    front = None
    if pareto is not None:
        front = _pareto_section(rep, att, comp, pareto)
    rep.data = {"attack": att, "compose": comp, "certify": [t for t in tables if t.kind == "certify"],
                "pareto": front}
    return rep


def _pareto_points(att, comp):
    """Model summaries (Table 1 rows) and composition rows as one frame of points with their group keys."""
    import pandas as pd

    from robcli.analysis.pareto import METRICS

    pts = []
    for r in att:
        pts.append({"dataset": r["dataset"], "norm": r["norm"], "eps": r["eps"], "kind": "model", "name": r["model"],
                    **{m: r.get(m, float("nan")) for m in METRICS}})
    for d in comp:
        for r in d.to_dict("records"):
            name = f"{r.get('table', '')} {r.get('selector', '')}"
            th = r.get("threshold")
            if th is not None and th == th:
                name += f" tau={float(th):g}"
            pts.append({"dataset": r.get("dataset", ""), "norm": r.get("norm", ""), "eps": r.get("eps", float("nan")),
                        "kind": "composition", "name": name, **{m: r.get(m, float("nan")) for m in METRICS}})
    df = pd.DataFrame(pts)
    if len(df):
        df["eps"] = df["eps"].map(_eps_round)
        for m in METRICS:
            df[m] = pd.to_numeric(df[m], errors="coerce").astype(float)
    return df


def _pareto_section(rep, att, comp, metrics):
    """Add the front section for ``metrics = (X, Y)``; returns (all points, front rows, X, Y) for the plot."""
    from robcli.analysis.pareto import direction
    from robcli.errors import UsageError

    x, y = metrics
    pts = _pareto_points(att, comp)
    if not len(pts) or pts[[x, y]].dropna().empty:
        raise UsageError(f"--pareto {x},{y}: no attack or compose rows carry both metrics")
    mask = grouped_pareto_mask(pts, x, y)
    front = pts[mask].sort_values(GROUP + [x], kind="stable")[GROUP + ["kind", "name", x, y]].reset_index(drop=True)
    rep.sections.append(Section(
        f"Pareto front: {x} vs {y} (per data set and threat model)", front,
        f"Non-dominated points; {x}: {direction(x)} is better, {y}: {direction(y)} is better. "
        "Points are model summaries (attack tables) and compositions (compose tables); fronts never mix data sets, "
        "norms or eps."))
    return {"points": pts, "front": front, "x": x, "y": y}


# ---------------------------------------------------------------- plots ----------------------------------
# One panel per (figure, data set, threat model, eps): a front only ever compares points of one data set at one
# threat radius. Rows of the figure are the figure kinds, in this order:
PANEL_KINDS = ("models", "compositions", "abstain", "certified", "pareto")
PANEL_TITLES = {"models": "models: robust accuracy vs robust inaccuracy (Fig. 2)",
                "compositions": "compositions vs core model (Fig. 4)",
                "abstain": "abstain models: robust selection (Fig. 3)",
                "certified": "certified accuracy vs L2 radius",
                "pareto": "Pareto front"}
AXES = {"models": ("robust_inaccuracy", "robust_acc"), "compositions": ("nat_acc", "robust_acc"),
        "abstain": ("robust_selection", "selected_robust_acc")}


def padded_limits(values, *, frac: float = 0.08, min_pad: float = 0.5, lo: float = 0.0,
                  hi: float = 100.0) -> tuple[float, float]:
    """Axis limits that show the differences between ``values`` (percent): the data's range plus padding.

    The padding is ``frac`` of the range, at least ``min_pad`` points, so that equal values (every point at 100%)
    give a narrow band around them instead of a range that says nothing; limits never pass ``lo``/``hi`` by more
    than half the padding (no 105% tick on an accuracy axis).
    """
    import numpy as np

    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return lo, hi
    a, b = float(v.min()), float(v.max())
    pad = max(frac * (b - a), min_pad)
    return max(a - pad, lo - pad / 2), min(b + pad, hi + pad / 2)


def short_eps(e: float) -> str:
    """``2/255`` when eps is a whole number of 255ths (as people write it), else 3 significant digits."""
    e = float(e)
    if e != e:
        return "?"
    k = e * 255
    if 0 < e <= 1 and abs(k - round(k)) < 1e-6 and abs(e - round(e, 3)) > 1e-9:
        return f"{int(round(k))}/255"
    return f"{e:.3g}"


def _group_title(kind: str, group: tuple) -> str:
    if kind == "certified":
        return f"{group[0] or 'data set ?'}\n{PANEL_TITLES[kind]}"
    ds, norm, eps = group
    return f"{ds or 'data set ?'}, {norm}, eps = {short_eps(eps)}\n{PANEL_TITLES[kind]}"


def plot_panels(data: dict) -> list[dict]:
    """The panels of the report figure, from :class:`Report`'s ``data``: a list of dicts with ``kind`` (one of
    :data:`PANEL_KINDS`), ``group`` ((dataset, norm, eps), or (dataset,) for certified accuracy), ``title`` and
    the rows to draw (``df``; ``tables`` for certified accuracy; ``front`` for --pareto).

    Models (attack tables), compositions and their abstain view, and --pareto points each get one panel per
    (data set, norm, eps); certify tables one per data set. An abstain panel is drawn only where some row has
    both robust selection and selected robust accuracy (a fixed-alpha sweep has no selector to select with).
    """
    import pandas as pd

    panels: list[dict] = []

    def grouped(d):
        d = d.copy()
        for k in GROUP:
            if k not in d.columns:
                d[k] = "" if k != "eps" else float("nan")
        d["eps"] = d["eps"].map(lambda e: _eps_round(e) if e == e else e)
        d["dataset"] = d["dataset"].fillna("").astype(str)
        return d.groupby(GROUP, sort=True, dropna=False)

    if data.get("attack"):
        for key, g in grouped(pd.DataFrame(data["attack"])):
            panels.append({"kind": "models", "group": tuple(key), "df": g.reset_index(drop=True)})
    if data.get("compose"):
        for key, g in grouped(pd.concat(data["compose"], ignore_index=True)):
            g = g.reset_index(drop=True)
            panels.append({"kind": "compositions", "group": tuple(key), "df": g})
            sel = g.dropna(subset=list(AXES["abstain"]))
            if len(sel):
                panels.append({"kind": "abstain", "group": tuple(key), "df": sel.reset_index(drop=True)})
    if data.get("certify"):
        by_ds: dict[str, list] = {}
        for t in data["certify"]:
            if len(t.df):
                by_ds.setdefault(_dataset(t), []).append(t)
        for ds in sorted(by_ds):
            panels.append({"kind": "certified", "group": (ds,), "tables": by_ds[ds]})
    pp = data.get("pareto")
    if pp:
        pts = pp["points"].dropna(subset=[pp["x"], pp["y"]])
        for key, g in grouped(pts):
            f = pp["front"]
            f = f[(f["dataset"] == key[0]) & (f["norm"] == key[1]) & (f["eps"] == key[2])]
            panels.append({"kind": "pareto", "group": tuple(key), "df": g.reset_index(drop=True), "front": f,
                           "x": pp["x"], "y": pp["y"]})
    for pnl in panels:
        pnl["title"] = _group_title(pnl["kind"], pnl["group"])
        if pnl["kind"] == "pareto":
            pnl["title"] = pnl["title"].replace(PANEL_TITLES["pareto"], f"Pareto front: {pnl['x']} vs {pnl['y']}")
    order = {k: i for i, k in enumerate(PANEL_KINDS)}
    panels.sort(key=lambda q: order[q["kind"]])  # stable: groups stay sorted within a kind
    return panels


def _unique_labels(names: list[str], alt: list[str]) -> list[str]:
    """``names``, with ``[alt]`` added where a name occurs more than once (two tables of one model)."""
    return [f"{n} [{a}]" if names.count(n) > 1 else n for n, a in zip(names, alt)]


def _legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # outside the axes, on the right: it never covers a point
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=7,
                  frameon=False)


def _front_line(ax, f, x, y, label="Pareto front") -> None:
    if len(f):
        ax.plot(100 * f[x], 100 * f[y], "--", color="0.25", marker="o", mfc="none", ms=11, lw=1, zorder=1,
                label=label)


def _draw(ax, pnl: dict, colors) -> None:
    import numpy as np

    from robcli.analysis.metrics import certificate_of
    from robcli.analysis.pareto import direction, pareto_front

    kind = pnl["kind"]
    xs: list[float] = []
    ys: list[float] = []
    if kind == "models":
        d = pnl["df"]
        x, y = AXES[kind]
        labels = _unique_labels(list(d["model"]), [Path(str(t)).stem for t in d.get("table", d["model"])])
        for lab, (_, r) in zip(labels, d.iterrows()):
            ax.scatter(100 * r[x], 100 * r[y], s=45, color=colors(lab), label=lab, zorder=3, edgecolors="white")
        _front_line(ax, pareto_front(d, x, y), x, y)
        xs += list(100 * d[x]); ys += list(100 * d[y])  # noqa: E702
    elif kind in ("compositions", "abstain"):
        d = pnl["df"]
        x, y = AXES[kind]
        for (table, selector), g in d.groupby(["table", "selector"], sort=True):
            g = g.sort_values("threshold") if g["threshold"].notna().any() else g
            lab = f"{table} ({selector})"
            c = colors(f"{table} {selector}")
            if len(g) > 1:  # a sweep (softmax-response thresholds, fixed-alpha weights): a curve in its order
                ax.plot(100 * g[x], 100 * g[y], "-", color=c, lw=1, alpha=0.6, zorder=2)
            ax.scatter(100 * g[x], 100 * g[y], s=32, color=c, label=lab, zorder=3, edgecolors="white")
            if selector == "fixed-alpha":  # one label per cluster of points that would print over each other
                spread = [max(1.0, float(100 * (g[k].max() - g[k].min()))) for k in (x, y)]
                clusters: list[list] = []
                for _, r in g.iterrows():
                    px, py = 100 * r[x], 100 * r[y]
                    near = next((c for c in clusters if abs(c[0] - px) < 0.04 * spread[0]
                                 and abs(c[1] - py) < 0.04 * spread[1]), None)
                    if near is None:
                        clusters.append([px, py, [r["threshold"]]])
                    else:
                        near[2].append(r["threshold"])
                for px, py, alphas in clusters:
                    ax.annotate("alpha=" + ", ".join(f"{a:g}" for a in alphas), (px, py), textcoords="offset points",
                                xytext=(5, -10), fontsize=6.5, color="0.25")
        good = d.dropna(subset=[x, y])
        _front_line(ax, pareto_front(good, x, y) if len(good) else good, x, y)
        xs += list(100 * d[x]); ys += list(100 * d[y])  # noqa: E702
        if kind == "compositions" and "core_nat_acc" in d:
            core = d.dropna(subset=["core_nat_acc", "core_robust_acc"]).drop_duplicates("core_model")
            for _, r in core.iterrows():
                ax.scatter(100 * r["core_nat_acc"], 100 * r["core_robust_acc"], marker="*", s=160, color="crimson",
                           edgecolors="k", linewidths=0.5, zorder=4, label=f"core alone ({Path(str(r['core_model'])).name})")
                xs.append(100 * r["core_nat_acc"]); ys.append(100 * r["core_robust_acc"])  # noqa: E702
    elif kind == "pareto":
        d, x, y = pnl["df"], pnl["x"], pnl["y"]
        for (k, name), g in d.groupby(["kind", "name"], sort=True):
            ax.scatter(100 * g[x], 100 * g[y], s=32, color=colors(name), label=f"{name} ({k})", zorder=3,
                       edgecolors="white")
        _front_line(ax, pnl["front"], x, y)
        xs += list(100 * d[x]); ys += list(100 * d[y])  # noqa: E702
    else:  # certified accuracy vs radius: one curve per (table, sigma)
        rmax = 0.1
        for t in pnl["tables"]:
            for sg in sorted(t.df["sigma"].unique()):
                g = t.df[t.df["sigma"] == sg]
                rmax = max(rmax, float(g["radius"].max()))
        rs = np.linspace(0, rmax * 1.05, 200)
        styles = ("-", "--", ":", "-.")
        all_sigmas = sorted({float(v) for t in pnl["tables"] for v in t.df["sigma"].unique()})
        for t in pnl["tables"]:  # colour: the model; line style: sigma
            for sg in sorted(t.df["sigma"].unique()):
                g = t.df[t.df["sigma"] == sg]
                ok = ((g["predict"] != -1) & (g["predict"] == g["label"])).to_numpy()
                r = g["radius"].to_numpy(float)
                acc = 100 * np.array([(ok & (r >= v)).mean() for v in rs])
                name = _model_label(t)
                if certificate_of(t)[1] and "[ESTIMATE]" not in name:
                    name += " (radius ESTIMATES)"
                style = styles[all_sigmas.index(float(sg)) % len(styles)]
                method, _ = _certify_method(t, g)
                targets = (t.config or {}).get("radii") if method.startswith("sequential") else None
                if targets:  # a sequential table decides only its target radii: points there, not a curve
                    tr = sorted(float(v) for v in targets)
                    tacc = [100 * float((ok & (r >= v - 1e-12)).mean()) for v in tr]
                    ax.plot(tr, tacc, marker="o", ms=5, color=colors(name + " sequential"), lw=0.8, linestyle=style,
                            label=f"{name} sigma={sg:g}, {method}")
                    ys += tacc
                    continue
                ax.step(rs, acc, where="post", color=colors(name), lw=1.4, linestyle=style,
                        label=f"{name} sigma={sg:g}" + (f", {method}" if method != "fixed-N CERTIFY" else ""))
                ys += [float(acc.max())]
        ax.set_xlim(0, rmax * 1.05)
        ax.set_ylim(0, padded_limits(ys + [0.0])[1])
        ax.set_xlabel("L2 radius")
        ax.set_ylabel("certified accuracy [%]")
    if kind != "certified":
        x, y = (pnl["x"], pnl["y"]) if kind == "pareto" else AXES[kind]
        ax.set_xlim(*padded_limits(xs))
        ax.set_ylim(*padded_limits(ys))
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            # ticks only where a percentage can be (the padding may pass 0 or 100 %), none left blank
            loc = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10])
            ticks = [t for t in loc.tick_values(lo, hi) if lo <= t <= hi and -1e-9 <= t <= 100 + 1e-9]
            axis.set_ticks(ticks)
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlim(*padded_limits(xs))  # set_ticks may widen the limits
        ax.set_ylim(*padded_limits(ys))
        ax.set_xlabel(f"{x.replace('_', ' ')} [%] ({direction(x)} is better)")
        ax.set_ylabel(f"{y.replace('_', ' ')} [%] ({direction(y)} is better)")
        if len(set(np.round(ys, 6))) == 1 and ys:
            ax.text(0.5, 0.04, f"every point at {ys[0]:.4g}%", transform=ax.transAxes, ha="center", fontsize=7,
                    color="0.35")
    ax.set_title(pnl["title"], fontsize=8.5)
    ax.grid(alpha=0.3)
    _legend(ax)


def report_figure(rep: Report):
    """The report figure (a matplotlib Figure, Agg), or None when nothing is plottable: one row per figure kind
    (:data:`PANEL_KINDS`), one panel per (data set, norm, eps) (:func:`plot_panels`), legends beside the axes,
    limits from the data (:func:`padded_limits`). The caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = plot_panels(rep.data)
    if not panels:
        return None
    rows = [k for k in PANEL_KINDS if any(q["kind"] == k for q in panels)]
    ncols = max(sum(q["kind"] == k for q in panels) for k in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(6.6 * ncols, 4.0 * len(rows)), squeeze=False,
                             layout="constrained")
    strong, light = plt.get_cmap("tab10").colors, plt.get_cmap("tab20").colors[1::2]
    seen: dict[str, int] = {}

    def colors(name: str):  # one colour per model/composition across every panel: tab10 first, then lighter
        if name not in seen:
            seen[name] = len(seen)
        i = seen[name]
        return strong[i] if i < 10 else light[(i - 10) % 10]

    for i, k in enumerate(rows):
        mine = [q for q in panels if q["kind"] == k]
        for j in range(ncols):
            if j < len(mine):
                _draw(axes[i][j], mine[j], colors)
            else:
                axes[i][j].set_visible(False)
    return fig



def _png_and_save(fig, path) -> bytes:
    """The figure as PNG bytes, also saved to ``path`` (format from its suffix) when given; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    if path is not None:
        fig.savefig(str(path), format=Path(path).suffix.lstrip(".").lower() or "png", dpi=110)
    plt.close(fig)
    return buf.getvalue()

def plot_report(rep: Report, path: str | Path | None = None) -> bytes | None:
    """Draw :func:`report_figure`; write ``path`` (PNG or SVG) when given; return the PNG bytes (for HTML), or
    None when nothing is plottable."""
    import matplotlib

    matplotlib.use("Agg")
    fig = report_figure(rep)
    if fig is None:
        return None
    return _png_and_save(fig, path)


SPLIT_COLORS = {"robust_accurate": "#1a9850", "robust_inaccurate": "#d73027", "nonrobust_accurate": "#91bfdb",
                "nonrobust_inaccurate": "#fc8d59"}


def plot_regions(pairs, path: str | Path | None = None, data_dir: str | None = None, *, grid: int = 300,
                 eps: float | None = None) -> bytes:
    """Fig. 1: decision regions of 2-D models with the test points coloured by their split.

    Args:
        pairs: list of (run dir, attack-or-partition table of that model on 2-D data).
        eps: which radius of an attack table holding several to colour the splits by.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from robcli.analysis.metrics import attack_view
    from robcli.analysis.partition import partition_frame
    from robcli.compose.confidence import load_view_examples
    from robcli.errors import UsageError
    from robcli.models import load_model
    from robcli.tables.io import read_table

    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4.2), squeeze=False)
    for ax, (run, tpath) in zip(axes[0], pairs):
        t = read_table(tpath, ("attack", "partition"))
        if t.kind == "attack":
            v = attack_view(t, eps)
            part = partition_frame(v)
        else:
            part = t.df
            from robcli.analysis.metrics import ModelView

            v = ModelView(part.set_index("idx")[["label"]], float(part["eps"].iloc[0]) if "eps" in part else 0.0,
                          "Linf", str(tpath), "partition", dict(t.meta.get("data") or {}))
        x, y, info = load_view_examples(v, data_dir)
        if x.dim() != 2 or x.shape[1] != 2:
            raise UsageError(f"decision regions need 2-D data; {info.name} has inputs of shape {tuple(x.shape[1:])}")
        lm = load_model(run, dataset_info=info)
        xs = np.linspace(0, 1, grid)
        gx, gy = np.meshgrid(xs, xs)
        pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
        with torch.no_grad():
            z = lm.model(pts).argmax(1).numpy().reshape(grid, grid)
        ax.contourf(gx, gy, z, levels=np.arange(info.num_classes + 1) - 0.5, cmap="Pastel1", alpha=0.8)
        split = part.set_index("idx").loc[v.df.index, "split"].to_numpy()
        xn = x.numpy()
        for s, col in SPLIT_COLORS.items():
            m = split == s
            ax.scatter(xn[m, 0], xn[m, 1], s=9, c=col, label=f"{s.replace('_', ' ')} ({100 * m.mean():.1f}%)",
                       edgecolors="none")
        ax.set_title(f"{Path(run).name} (eps={v.eps:.3g})", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return _png_and_save(fig, path)
