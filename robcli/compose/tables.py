"""Selector compositions from per-example tables, as `robcli compose` evaluates them (paper eq. 15): read and
check the tables (:func:`read_tables`: one model per spec), evaluate the composition or the softmax-response
sweep, and (optionally) prepare the exported composite model. :func:`compose_tables` returns a
:class:`Composition` (the compose table, its config, provenance and the card to export);
:func:`write_composition` writes it. Nothing touches a terminal; user mistakes raise robcli's typed errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SWEEP = [round(0.05 * i, 2) for i in range(21)]
LEAD = ["selector", "threshold", "eps", "nat_acc", "robust_acc", "robust_selection", "selected_robust_acc",
        "robust_inaccuracy", "delta_nat_acc", "delta_robust_acc"]


@dataclass
class Composition:
    """A compose table and what goes with it: ``config`` and ``prov`` (as written), ``card`` (the composite
    model's card when exporting, else None), ``certs`` (the certificates the claims rest on) and
    ``composition_alpha`` (their union bound; NaN for attack tables)."""

    df: object
    config: dict
    prov: dict
    card: dict | None = None
    certs: list = field(default_factory=list)
    composition_alpha: float = float("nan")
    export: str | None = None
    inner: dict = field(default_factory=dict)


def spec_text(spec) -> str:
    """How a table spec is named in messages and the compose table (its paths, comma-joined)."""
    if isinstance(spec, str):
        return spec
    return ",".join(t.path for t in (spec if isinstance(spec, (tuple, list)) else [spec]))


def read_tables(spec):
    """``A.parquet[,B.parquet]``: tables of one model (e.g. eps and 2*eps runs) read as one. ``spec`` may also
    be a :class:`robcli.tables.io.Table` or a tuple of them (robcli.api passes tables held in memory)."""
    import pandas as pd

    from robcli.errors import TableError
    from robcli.tables.io import Table, read_table

    if isinstance(spec, str):
        parts = [read_table(p.strip(), ("attack", "certify")) for p in spec.split(",") if p.strip()]
    else:
        parts = list(spec) if isinstance(spec, (tuple, list)) else [spec]
        spec = spec_text(spec)
    if not parts:
        raise TableError(f"empty table list {spec!r}")
    kinds = {p.kind for p in parts}
    if len(kinds) != 1:
        raise TableError(f"{spec} mixes attack and certify tables")
    for p in parts[1:]:
        for key in ("dataset", "split"):
            a, b = (parts[0].meta.get("data") or {}).get(key), (p.meta.get("data") or {}).get(key)
            if a is not None and b is not None and a != b:
                raise TableError(f"{p.path} is on {key} {b!r} but {parts[0].path} is on {a!r}")
    check_same_model(parts)
    if len(parts) == 1:
        return parts[0]
    return Table(df=pd.concat([p.df for p in parts], ignore_index=True), kind=parts[0].kind, meta=parts[0].meta, path=spec)


def model_ids(t) -> tuple[set, set]:
    """(sha256s, paths) of the models a table's provenance records."""
    models = [m for m in (t.meta.get("models") or []) if isinstance(m, dict)]
    return {m["sha256"] for m in models if m.get("sha256")}, {str(m["path"]) for m in models if m.get("path")}


def check_same_model(parts) -> None:
    """Parts of one ``-r``/``-c`` spec must come from one model: same weights sha256 (else, same recorded
    path), and the same clean prediction wherever two parts hold the same example."""
    from robcli.errors import TableError

    if len(parts) < 2:
        return
    sha0, path0 = model_ids(parts[0])
    for p in parts[1:]:
        sha, path = model_ids(p)
        if sha0 and sha and not (sha0 & sha):
            raise TableError(f"{p.path} and {parts[0].path} were made by different models (weights sha256 differ); "
                             "EPS_TABLE,2EPS_TABLE must be attacks on the same model")
        if not (sha0 and sha) and path0 and path and not (path0 & path):
            raise TableError(f"{p.path} and {parts[0].path} were made by different models "
                             f"({', '.join(sorted(path))} vs {', '.join(sorted(path0))})")
    if parts[0].kind != "attack":
        return  # certify predictions are Monte-Carlo and differ per sigma; the sha256 check above suffices
    preds = [p.df[["idx", "clean_pred"]].drop_duplicates("idx").set_index("idx")["clean_pred"] for p in parts]
    for p, pr in zip(parts[1:], preds[1:]):
        shared = preds[0].index.intersection(pr.index)
        bad = shared[(preds[0].loc[shared].to_numpy() != pr.loc[shared].to_numpy())]
        if len(bad):
            raise TableError(f"{p.path} and {parts[0].path} disagree on the clean prediction of {len(bad)} shared "
                             f"example(s) (e.g. idx {int(bad[0])}): not the same model")


def compose_tables(robust: list[str], core: str, *, eps: str, out: str | None = None, selector: str = "ri",
                   threshold=None, do_sweep: bool = False, norm: str | None = None, sigma: float | None = None,
                   check: str = "2eps", robust_model=None, core_model: str | None = None, dataset: str | None = None,
                   data_dir: str | None = None, export: str | None = None, export_threshold=None,
                   export_inner_attack: str = "pgd", export_inner_steps: int = 20, export_inner_restarts: int = 1,
                   steps: int = 50, device: str = "auto", seed: int = 0, force: bool = False, command=None,
                   given: frozenset = frozenset()) -> Composition:
    """Evaluate H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x) (and cascades) from the ``robust`` and ``core``
    table specs (``A.parquet[,B.parquet]``: one model's eps and 2*eps tables), as `robcli compose` does.

    ``steps``: PGD steps of the confidence attack run on ``robust_model`` (softmax-response selectors).
    ``given``: the flag names the user gave (``--export-inner-steps``, ...), for refusals that depend on it.
    Nothing is written: an ``export`` card is prepared (models loaded and checked) and returned.

    Raises:
        UsageError: inconsistent options, existing outputs without ``force``. TableError: tables that do not fit.
    """
    import pandas as pd

    from robcli.analysis.metrics import check_same_examples, check_selector_table, view_from_table
    from robcli.compose.evaluate import evaluate_composition, sweep
    from robcli.compose.selectors import SELECTORS, parse_selector, ri_member, sr_member, sr_pointwise_member
    from robcli.errors import TableError, UsageError
    from robcli.tables.io import provenance
    from robcli.utils.parse import parse_eps, parse_fraction_in, parse_norm

    sel = parse_selector(selector)
    if check not in ("2eps", "eps"):
        raise UsageError(f"--selection-check {check!r}: choose 2eps or eps")
    nrm = parse_norm(norm) if norm is not None else None
    e = parse_eps(eps, nrm or "Linf")
    taus = [parse_fraction_in(t, "threshold", 0.0, 1.0) for t in (threshold or [])]
    if do_sweep:
        taus = sorted(set(taus) | set(SWEEP))
    if sel == "ri" and taus:
        raise UsageError("--threshold/--sweep belong to the softmax-response selector (--selector sr)")
    if sel != "ri" and not taus:
        raise UsageError("the softmax-response selector needs --threshold T or --sweep")
    if robust_model and len(robust_model) != len(robust):
        raise UsageError(f"{len(robust_model)} --robust-model for {len(robust)} --robust tables: give one per robust model, in order")
    exp_taus = [parse_fraction_in(t, "export threshold", 0.0, 1.0) for t in (export_threshold or [])]
    if export is not None:
        if not robust_model or core_model is None:
            raise UsageError("--export needs --robust-model (one per --robust) and --core-model run dirs")
        if exp_taus and len(exp_taus) != len(robust):
            raise UsageError("give one --export-threshold per robust model")
        if sel == "ri" and exp_taus:
            raise UsageError("--export-threshold belongs to softmax-response exports (--selector sr); a robustness-indicator "
                             "export runs an inner attack (--export-inner-attack/--export-inner-steps)")
        from robcli.compose.export import INNER_ATTACKS, SR_INNER_ATTACKS

        if export_inner_attack not in INNER_ATTACKS:
            raise UsageError(f"--export-inner-attack {export_inner_attack!r}: choose {' or '.join(INNER_ATTACKS)}")
        if sel == "sr" and export_inner_attack not in SR_INNER_ATTACKS:
            raise UsageError(f"--export-inner-attack {export_inner_attack} is a margin attack for the robustness indicator; "
                             f"the softmax-response (eq. 16) export minimises the max softmax with {' or '.join(SR_INNER_ATTACKS)}")
        if sel == "sr-pointwise" and given & {"--export-inner-attack", "--export-inner-steps", "--export-inner-restarts"}:
            raise UsageError("--export-inner-* belong to exports that run an inner attack (--selector ri or sr); "
                             "sr-pointwise selects on the clean confidence")
        if export_inner_steps < 1 or export_inner_restarts < 1:
            raise UsageError("--export-inner-steps and --export-inner-restarts must be >= 1")
        if sel != "ri" and not exp_taus and len(taus) != 1:
            raise UsageError("--export with a threshold sweep: choose the exported threshold with --export-threshold")
    for p in (out, export):
        if p is not None and Path(p).exists() and not force:
            raise UsageError(f"{p} exists; pass --force to overwrite")

    core_t = read_tables(core)
    core_v = view_from_table(core_t, e, norm=nrm, sigma=sigma)
    rob_ts = [read_tables(r) for r in robust]
    robust, core = [spec_text(r) for r in robust], spec_text(core)
    for t in rob_ts:
        check_selector_table(t)  # a selector cannot use labels (certify --against label tables)
    for run, t in [*zip(robust_model or [], rob_ts), *([(core_model, core_t)] if core_model else [])]:
        check_run_matches_table(run, t)
    e_check = 2 * e if check == "2eps" else e
    views_eps, views_chk = [], []
    for spec, t in zip(robust, rob_ts):
        v = view_from_table(t, e, norm=nrm, sigma=sigma)
        views_eps.append(v)
        if sel == "ri":
            try:
                vc = view_from_table(t, e_check, norm=nrm, sigma=sigma) if check == "2eps" else v
            except TableError:
                raise TableError(
                    f"{spec} has no rows at 2*eps={e_check:g}: the robustness-indicator selector needs robust selection "
                    f"(eq. 14); run `robcli attack --model ROBUST_MODEL --eps {e_check:g} ...` and pass both tables as "
                    f"--robust EPS_TABLE,2EPS_TABLE"
                ) from None
            views_chk.append(vc)
    check_same_examples([core_v, *views_eps, *views_chk])
    if core_v.norm != views_eps[0].norm:
        raise TableError("robust and core tables use different norms")

    n_models = len(rob_ts)
    rows: list[dict] = []
    names = [v.model for v in views_eps]
    if sel == "sr-pointwise":
        check = "eps"  # its sound robust-selection rule: the selector looks at x' alone, so B_eps(x)
    if sel == "ri":
        members = [ri_member(v, vc, name) for v, vc, name in zip(views_eps, views_chk, names)]
        m, _ = evaluate_composition(members, core_v)
        m["threshold"] = float("nan")
        m["selector"] = members[0].selector
        rows.append(m)
    else:
        radii = [e, e_check] if sel == "sr" and e_check != e else [e]
        confs = confidences(rob_ts, views_eps, robust, robust_model, radii, steps, device, seed, data_dir, dataset)

        def make_members(tau: float):
            if sel == "sr":  # eq. 16: B_eps decides the selection, the check ball (B_2eps) robust selection
                return [sr_member(v, cc, lows[0], lows[-1], tau, name) for v, (cc, lows), name in zip(views_eps, confs, names)]
            return [sr_pointwise_member(v, cc, lows[0], tau, name) for v, (cc, lows), name in zip(views_eps, confs, names)]

        rows = sweep(make_members, taus, core_v)
        for m in rows:
            m["selector"] = SELECTORS.get(sel).meta["column"]
    df = pd.DataFrame(rows)
    df["eps"] = e
    df["norm"] = core_v.norm
    df["selection_check"] = check
    certs = certificates([*(("robust", spec, t, v) for spec, t, v in zip(robust, rob_ts, views_eps)),
                           ("core", core, core_t, core_v)], sigma)
    comp_alpha = float(sum(c["alpha"] for c in certs)) if certs else float("nan")
    df["composition_alpha"] = comp_alpha
    df["robust_models"] = ";".join(names)
    df["core_model"] = core_v.model
    df["robust_tables"] = ";".join(robust)
    df["core_table"] = core
    df["n_robust_models"] = n_models
    from robcli.analysis.pareto import pareto_mask

    df["pareto_nat_robust"] = pareto_mask(df["nat_acc"], df["robust_acc"])
    df = df[LEAD + [c for c in df.columns if c not in LEAD]]

    config = {"robust": list(robust), "core": core, "eps": e, "norm": core_v.norm, "selector": sel, "thresholds": taus,
              "selection_check": check, "sigma": sigma, "robust_model": robust_model, "core_model": core_model,
              "export": export, "certificates": certs, "composition_alpha": None if not certs else comp_alpha}
    if certs:
        config["composition_alpha_rule"] = (
            f"union bound: one example's claim can rest on up to {len(certs)} certificates (the robust members and "
            f"the core), so it fails with probability <= {comp_alpha:g}; for a composition-level alpha A, certify "
            f"each table at A/{len(certs)}")
    card = None
    if export is not None:  # load and check the models before anything is written
        from robcli.compose.export import prepare_composite

        if sel == "sr":
            kw = {"selector": "softmax-response", "thresholds": exp_taus or [taus[0]] * n_models, "eps": e,
                  "norm": core_v.norm, "inner_attack": export_inner_attack, "inner_steps": export_inner_steps,
                  "inner_restarts": export_inner_restarts, "seed": seed}
        elif sel == "sr-pointwise":
            kw = {"selector": "softmax-response-pointwise", "thresholds": exp_taus or [taus[0]] * n_models}
        else:
            kw = {"selector": "robustness-indicator", "eps": e, "norm": core_v.norm, "inner_attack": export_inner_attack,
                  "inner_steps": export_inner_steps, "inner_restarts": export_inner_restarts, "seed": seed}
        config["export_selector"] = dict(kw)
        card = prepare_composite(export, list(robust_model or []), str(core_model),
                                 info={"evaluated_selector": rows[0]["selector"], "evaluated": config}, **kw)
    prov = provenance(data=core_t.meta.get("data"), command=list(command or []), seed=seed)
    # one flat list of {path, sha256, ...} entries as in every other table, each tagged with its role
    prov["models"] = [{**m, "role": role} for role, t in [*(("robust", t) for t in rob_ts), ("core", core_t)]
                      for m in (t.meta.get("models") or []) if isinstance(m, dict)]
    return Composition(df=df, config=config, prov=prov, card=card, certs=certs, composition_alpha=comp_alpha,
                       export=export, inner={"selector": sel, "attack": export_inner_attack,
                                             "steps": export_inner_steps, "eps": e})


def write_composition(comp: Composition, out: str | None) -> None:
    """Write the compose table to ``out`` (when given) and the exported card (when prepared); on a failure
    while writing the card the table is removed again (nothing written on error)."""
    from robcli.tables.io import write_table

    if out is not None:
        write_table(comp.df, out, "compose", config=comp.config, prov=comp.prov)
    if comp.card is not None:
        from robcli.compose.export import write_card

        try:
            write_card(comp.export, comp.card)
        except BaseException:
            if out is not None:
                Path(out).unlink(missing_ok=True)
            raise


def export_summary(comp: Composition) -> str:
    """One line on the exported composite's selector (for the CLI to print)."""
    sel, inner = comp.inner["selector"], comp.inner
    taus_txt = ", ".join(f"{m_['threshold']:g}" for m_ in comp.card["composite"]["members"]) if sel != "ri" else ""
    what = {"sr": f"softmax response (eq. 16) at thresholds {taus_txt}, lowest confidence on B_eps by "
                  f"{inner['attack']} ({inner['steps']} steps) at eps={inner['eps']:g}",
            "sr-pointwise": f"pointwise softmax response at thresholds {taus_txt}",
            "ri": f"robustness indicator by {inner['attack']} ({inner['steps']} steps) at eps={inner['eps']:g}"}[sel]
    return f"wrote composite model {comp.export} ({what})"


def certificates_note(comp: Composition) -> str:
    """One line on the union bound of a composition of certify tables (for the CLI to print)."""
    k = len(comp.certs)
    return (f"composition_alpha {comp.composition_alpha:g}: one example's claim rests on up to {k} certificates "
            f"(union bound of their alphas); certify each table at A/{k} for a composition-level alpha A")


def check_run_matches_table(run: str, table) -> None:
    """Refuse a --robust-model/--core-model whose weights are not the model the table was made with (for a
    mixture certificate: that is not the mixture run directory it certifies)."""
    from pathlib import Path

    from robcli.analysis.metrics import check_certified_run
    from robcli.errors import TableError
    from robcli.tables.io import provenance

    check_certified_run(table, run)

    want = {m.get("sha256") for m in table.meta.get("models") or [] if isinstance(m, dict) and m.get("sha256")}
    if not want or not Path(run).exists():
        return  # nothing recorded to compare with; a missing run is reported where it is loaded
    have = [m.get("sha256") for m in provenance(models=[run])["models"]]
    if have and have[0] and have[0] not in want:
        raise TableError(f"{run} is not the model {table.path} was made with (its weights' sha256 differs); "
                         "give the run dirs in the same order as the tables")


def certificates(entries, sigma) -> list[dict]:
    """The certificates a composition's claims rest on: one per certify table (member or core) per example.

    Each ``entries`` item is ``(role, spec, table, view)``; attack tables carry no certificate. A table's
    alpha is the largest alpha of its rows at the chosen sigma over the composed examples; rows without
    Monte-Carlo samples (``N == 0``: the deterministic Lipschitz mixture certificate) fail with probability 0.
    """
    import numpy as np

    from robcli.analysis.metrics import same_eps
    from robcli.errors import TableError

    out = []
    for role, spec, t, v in entries:
        if t.kind != "certify":
            continue
        d = t.df
        if sigma is not None and "sigma" in d.columns:
            d = d[d["sigma"].map(lambda s_: same_eps(s_, sigma))]
        d = d[d["idx"].isin(v.df.index)]
        if "alpha" in d.columns:
            alphas = d["alpha"].to_numpy(float)
        elif t.config.get("alpha") is not None:
            alphas = np.full(len(d), float(t.config["alpha"]))
        else:
            raise TableError(f"{spec} does not record the alpha of its certificates")
        sampled = d["N"].to_numpy(float) > 0 if "N" in d.columns else np.ones(len(d), dtype=bool)
        a = float(alphas[sampled].max()) if sampled.any() else 0.0
        if not np.isfinite(a):
            raise TableError(f"{spec} does not record the alpha of its certificates")
        out.append({"role": role, "table": spec, "alpha": a})
    return out


def confidences(tables, views, specs, runs, radii, steps, device, seed, data_dir, dataset):
    """Per robust model: (clean max-softmax, [lowest max-softmax found on B_r(x) for r in radii]).

    At each radius: every attack row there (APGD-conf and any other attack: a flipped point caps at 0.5), and,
    with --robust-model, our confidence-minimising PGD. Without the model, APGD-conf rows (they carry the
    confidences) are required at every radius.
    """
    import numpy as np

    from robcli.analysis.metrics import same_eps
    from robcli.compose.confidence import min_conf_over_rows
    from robcli.errors import TableError

    out = []
    for i, (t, v, spec) in enumerate(zip(tables, views, specs)):
        df = t.df
        has_cols = "clean_conf" in df.columns and ("adv_conf" in df.columns or {"adv_conf_other", "adv_margin"} <= set(df.columns))
        cc = None
        lows, missing = [], []
        for r in radii:
            at_r = df[df["eps"].map(lambda x, r=r: same_eps(x, r))] if t.kind == "attack" else df.iloc[:0]
            if "norm" in at_r.columns:
                at_r = at_r[at_r["norm"] == v.norm]
            conf_rows = at_r[at_r["attack"] == "apgd-conf"] if has_cols else at_r.iloc[:0]
            if len(conf_rows):
                rr = conf_rows.drop_duplicates("idx").set_index("idx").reindex(v.df.index)
                if rr["clean_conf"].isna().any():
                    raise TableError(f"{spec}: the apgd-conf rows at {r:g} do not cover every example")
                cc = rr["clean_conf"].to_numpy(float) if cc is None else cc
            else:
                missing.append(r)
            lows.append(min_conf_over_rows(at_r, v.df.index))  # 1.0 where the radius has no rows
        if runs:
            from robcli.compose.confidence import load_view_examples, softmax_confidences
            from robcli.models import load_model
            from robcli.utils.device import resolve_device

            x, _, info = load_view_examples(v, data_dir, dataset)
            lm = load_model(runs[i], dataset_info=info)
            dev = resolve_device(device)
            for k, r in enumerate(radii):
                c2, m2 = softmax_confidences(lm.model, x, eps=r, norm=v.norm, steps=steps, seed=seed, device=dev)
                cc = c2 if cc is None else cc
                lows[k] = np.minimum(lows[k], m2)
        elif missing:
            need = " ".join(f"--eps {r:g}" for r in radii)
            raise TableError(
                f"{spec}: the softmax-response selector needs the robust model's confidences at "
                f"{', '.join(f'{r:g}' for r in missing)}: run `robcli attack --model ROBUST_MODEL --attack apgd-conf {need}` "
                "(its table carries clean_conf, adv_conf_other, adv_margin) and add it to -r, or pass --robust-model RUN"
            )
        out.append((cc, [np.minimum(lo, cc) for lo in lows]))
    return out
