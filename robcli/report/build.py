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

from robcli.errors import TableError
from robcli.report.render import Report, Section

DEFAULT_RADII = (0.0, 0.12, 0.25, 0.5, 0.75, 1.0)


def collect(paths) -> list:
    """Read every table named (a run dir contributes every robcli table inside it)."""
    from robcli.tables.io import read_table

    tables = []
    for p in map(Path, paths):
        if not p.exists():
            raise TableError(f"{p} does not exist")
        if p.is_dir() and (p / "card.json").exists():  # a run dir: every table inside
            files = sorted(p.rglob("*.parquet"))
            if not files:
                raise TableError(f"run dir {p} holds no tables")
            tables += [read_table(f) for f in files if not f.name.startswith(".")]
        else:
            tables.append(read_table(p))
    return tables


def _model_label(t) -> str:
    from robcli.analysis.metrics import certificate_of, certified_model_name

    name = certified_model_name(t, display=model_display_name)
    if name is not None:  # a mixture certificate: name the mixture, not its robust member
        return name + (" [ESTIMATE]" if certificate_of(t)[1] else "")
    models = t.meta.get("models") or []
    if models and isinstance(models[0], dict) and models[0].get("path"):
        return model_display_name(str(models[0]["path"]))
    return Path(t.path).stem


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


def build_report(tables, radii=DEFAULT_RADII, pareto: tuple[str, str] | None = None) -> Report:
    """Paper-style sections from the tables; ``pareto=(X, Y)`` adds a Pareto-front section on those metrics."""
    import pandas as pd

    from robcli.analysis.metrics import attack_view, available_eps, certificate_of, certify_view, summarize
    from robcli.analysis.partition import split_summary

    rep = Report()
    estimates = False  # a certify table of radius estimates contributed rows (labelled [ESTIMATE])
    att, part, comp, cert, cert_sel, logs = [], [], [], [], [], []
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
                for r in radii:
                    # refuses mixture-with-smoothed-h tables; estimates pass, labelled [ESTIMATE] by _model_label
                    v = certify_view(t, r, sigma=float(sg), allow_estimate=True)
                    s = summarize(v)
                    row[f"acc@{r:g}"] = s["robust_acc"]
                    row[f"inacc@{r:g}"] = s["robust_inaccuracy"]
                    sel = v.df["robust"]  # not abstained and certified radius >= r: the selector selects
                    srow[f"sel@{r:g}"] = float(sel.mean()) if len(g) else float("nan")
                    srow[f"selacc@{r:g}"] = float(v.df["correct"][sel].mean()) if sel.any() else float("nan")
                cert.append(row)
                cert_sel.append(srow)
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
        est_note = (" Rows marked [ESTIMATE] are built on radius estimates (certify --method mix-local-estimate, 004 App. C.3), "
                    "not certificates: their numbers are estimates." if estimates else "")
        rep.sections.append(Section("Certified accuracy (acc@r) and certified robust inaccuracy (inacc@r) at L2 radii (Tables 2/3)",
                                    pd.DataFrame(cert), est_note.strip()))
        rep.sections.append(Section(
            "Certified robustness-indicator selector: robust selection (sel@r) and selected robust accuracy (selacc@r) (Table 3)",
            pd.DataFrame(cert_sel),
            "sel@r: fraction of examples with certified radius >= r (not abstained); selacc@r: accuracy among them. "
            "For a composition at threat radius eps the sound robust selection is sel@(2*eps) (compose's default "
            "--selection-check 2eps); the paper's criterion is sel@eps." + est_note))
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


def plot_report(rep: Report, path: str | Path | None = None) -> bytes | None:
    """One figure with a panel per available plot (Figures 2-4 style, certified accuracy vs radius).

    Writes ``path`` (PNG or SVG) when given; returns the PNG bytes (for HTML), or None when nothing to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    from robcli.analysis.metrics import certificate_of
    from robcli.analysis.pareto import direction, pareto_front

    data = rep.data
    panels = []
    if data.get("attack"):
        panels.append("att")
    if data.get("compose"):
        panels += ["nat_rob", "sel"]
    if data.get("certify"):
        panels.append("cert")
    if data.get("pareto"):
        panels.append("pareto")
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    for ax, kind in zip(axes[0], panels):
        if kind == "att":
            d = pd.DataFrame(data["attack"])
            d["eps"] = d["eps"].map(_eps_round)
            for (m, e), g in d.groupby(["model", "eps"]):
                ax.scatter(100 * g["robust_inaccuracy"], 100 * g["robust_acc"], label=f"{m} eps={e:.3g}", s=30)
            # fronts only compare models of one data set at the same threat model
            for i, (_, g) in enumerate(d.groupby(GROUP, dropna=False)):
                f = pareto_front(g, "robust_inaccuracy", "robust_acc")
                ax.plot(100 * f["robust_inaccuracy"], 100 * f["robust_acc"], "k--", marker="o", mfc="none", ms=9, lw=1,
                        label="Pareto front (per data set, norm, eps)" if i == 0 else None)
            ax.set_xlabel("robust inaccuracy [%]")
            ax.set_ylabel("robust accuracy [%]")
            ax.set_title("Robust accuracy vs robust inaccuracy (Fig. 2)")
        elif kind in ("nat_rob", "sel"):
            d = pd.concat(data["compose"], ignore_index=True)
            x, y = ("nat_acc", "robust_acc") if kind == "nat_rob" else ("robust_selection", "selected_robust_acc")
            for name, g in d.groupby(["table", "selector"]):
                ax.scatter(100 * g[x], 100 * g[y], s=25, label=" ".join(name))
            d = d.assign(eps=d["eps"].map(_eps_round)) if "eps" in d else d
            keys = [k for k in GROUP if k in d.columns]
            for i, (_, g) in enumerate(d.dropna(subset=[x, y]).groupby(keys, dropna=False) if keys else [(0, d.dropna(subset=[x, y]))]):
                f = pareto_front(g, x, y)
                ax.plot(100 * f[x], 100 * f[y], "k--", marker="o", mfc="none", ms=9, lw=1,
                        label="Pareto front (per data set, norm, eps)" if i == 0 else None)
            if kind == "nat_rob" and "core_nat_acc" in d:
                core = d.drop_duplicates("core_model")
                ax.scatter(100 * core["core_nat_acc"], 100 * core["core_robust_acc"], marker="*", s=120, c="red", label="core alone")
            ax.set_xlabel(x.replace("_", " ") + " [%]")
            ax.set_ylabel(y.replace("_", " ") + " [%]")
            ax.set_title("Compositions (Fig. 4)" if kind == "nat_rob" else "Abstain models (Fig. 3)")
        elif kind == "pareto":
            pp = data["pareto"]
            x, y, pts, front = pp["x"], pp["y"], pp["points"], pp["front"]
            for name, g in pts.dropna(subset=[x, y]).groupby(["kind", "name"]):
                ax.scatter(100 * g[x], 100 * g[y], s=22, label=" ".join(name), alpha=0.8)
            for (ds, nrm, e), f in front.groupby(GROUP, dropna=False):
                ax.plot(100 * f[x], 100 * f[y], "--", marker="o", mfc="none", ms=10, lw=1.2,
                        label=f"front {ds or '?'} {nrm} eps={e:.3g}")
            ax.set_xlabel(f"{x.replace('_', ' ')} [%] ({direction(x)} is better)")
            ax.set_ylabel(f"{y.replace('_', ' ')} [%] ({direction(y)} is better)")
            ax.set_title(f"Pareto front: {x} vs {y}")
        else:
            for t in data["certify"]:
                for sg in sorted(t.df["sigma"].unique()):
                    g = t.df[t.df["sigma"] == sg]
                    rmax = max(float(g["radius"].max()), 0.1)
                    rs = np.linspace(0, rmax * 1.05, 100)
                    ok = (g["predict"] != -1) & g["correct"]
                    acc = [float((ok & (g["radius"] >= r)).mean()) for r in rs]
                    est = " (radius ESTIMATES)" if certificate_of(t)[1] else ""
                    ax.plot(rs, 100 * np.asarray(acc), label=f"{Path(t.path).stem} sigma={sg:g}{est}")
            ax.set_xlabel("L2 radius")
            ax.set_ylabel("certified accuracy [%]")
            ax.set_title("Certified accuracy vs radius")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    if path is not None:
        fig.savefig(str(path), format=Path(path).suffix.lstrip(".").lower() or "png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    if path is not None:
        fig.savefig(str(path), format=Path(path).suffix.lstrip(".").lower() or "png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
