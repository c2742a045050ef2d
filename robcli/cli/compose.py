"""`robcli compose`: robust model(s) + selector + core model, evaluated soundly from tables (paper eq. 15)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robcli.cli.common import (
    DataDirOpt,
    DeviceOpt,
    ForceOpt,
    NExOpt,
    QuietOpt,
    SeedOpt,
    SkipOpt,
    SplitOpt,
    argv,
    check_out,
    handle_errors,
)
from robcli.cli.mix import MixSpaceOpt, ScaleGOpt, ScaleHOpt

SWEEP = [round(0.05 * i, 2) for i in range(21)]

SELECTOR_HELP = (
    "ri (robustness indicator, eq. 12/13), sr (softmax response as eq. 16 states it: select x when the max-softmax "
    "stays >= threshold on all of B_eps(x)) or sr-pointwise (select when the max-softmax at x >= threshold; not "
    "eq. 16). Soundness rule: an example counts as robust and accurate for H only if the selector's decision cannot "
    "flip inside B_eps(x) and the model it routes to is robust and accurate there. Robust selection uses the 2*eps "
    "rule (eq. 14): the robust model robust on B_2eps(x) (-r EPS_TABLE,2EPS_TABLE of one model); sr: lowest "
    "max-softmax on B_eps(x) >= threshold decides the selection, on B_2eps(x) the robust selection (APGD-conf and "
    "every attack row at that radius, capped at 0.5 where the prediction flipped); sr-pointwise: lowest max-softmax "
    "on B_eps(x) >= threshold is its robust selection. Abstain case (not robustly selected): the robust model must "
    "still be right at x (ri; sr with threshold > 0.5) or robust and accurate (sr-pointwise; sr with threshold <= "
    "0.5) wherever it might be selected, and the core model robust and accurate at eps; robust abstention is never "
    "claimed. Certified selector: radius >= 2*eps by default, --selection-check eps for the paper's radius >= eps."
)


CERT_HELP = (
    "Certify tables (-r/-c): one example's claim can rest on up to m + 1 certificates (m robust members and the "
    "core), each failing with probability up to its alpha, so the table records composition_alpha = the sum of "
    "their alphas (union bound); for a composition-level alpha A, certify each table at A/(m+1)."
)


def _read_many(spec: str):
    """``A.parquet[,B.parquet]``: tables of one model (e.g. eps and 2*eps runs) read as one."""
    import pandas as pd

    from robcli.errors import TableError
    from robcli.tables.io import Table, read_table

    parts = [read_table(p.strip(), ("attack", "certify")) for p in spec.split(",") if p.strip()]
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
    _check_same_model(parts)
    if len(parts) == 1:
        return parts[0]
    return Table(df=pd.concat([p.df for p in parts], ignore_index=True), kind=parts[0].kind, meta=parts[0].meta, path=spec)


def _model_ids(t) -> tuple[set, set]:
    """(sha256s, paths) of the models a table's provenance records."""
    models = [m for m in (t.meta.get("models") or []) if isinstance(m, dict)]
    return {m["sha256"] for m in models if m.get("sha256")}, {str(m["path"]) for m in models if m.get("path")}


def _check_same_model(parts) -> None:
    """Parts of one ``-r``/``-c`` spec must come from one model: same weights sha256 (else, same recorded
    path), and the same clean prediction wherever two parts hold the same example."""
    from robcli.errors import TableError

    if len(parts) < 2:
        return
    sha0, path0 = _model_ids(parts[0])
    for p in parts[1:]:
        sha, path = _model_ids(p)
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


@handle_errors
def compose(
    robust: Annotated[list[str], typer.Option("--robust", "-r", help="Robust model's attack (or certify) table(s), comma-joined when eps and 2*eps sit in separate files; repeat for a cascade (tried in order). " + CERT_HELP + " With --mix/--mix-sweep: the robust MODEL h (run dir or checkpoint).")],
    core: Annotated[str, typer.Option("--core", "-c", help="Core model's attack (or certify) table at eps. With --mix/--mix-sweep: the core MODEL g.")],
    eps: Annotated[Optional[str], typer.Option("--eps", help="Threat radius of the composition, e.g. 1/255 (certified: the L2 radius); --mix-sweep: the attack radius.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Compose table (Parquet).")] = None,
    selector: Annotated[str, typer.Option("--selector", help=SELECTOR_HELP)] = "ri",
    threshold: Annotated[Optional[list[str]], typer.Option("--threshold", help="Softmax-response threshold in [0,1]; repeatable.")] = None,
    do_sweep: Annotated[bool, typer.Option("--sweep", help="Softmax response: thresholds 0, 0.05, ..., 1.")] = False,
    norm: Annotated[Optional[str], typer.Option("--norm", help="Linf or L2 (default: the tables' norm; certify tables: L2).")] = None,
    sigma: Annotated[Optional[float], typer.Option("--sigma", help="Certify tables holding several sigmas: which one.")] = None,
    check: Annotated[str, typer.Option("--selection-check", help="2eps (sound, eq. 14) or eps (the paper's certified criterion; not sound for the selector).")] = "2eps",
    robust_model: Annotated[Optional[list[str]], typer.Option("--robust-model", help="Robust model run dir(s), same order as --robust: softmax confidences and --export.")] = None,
    core_model: Annotated[Optional[str], typer.Option("--core-model", help="Core model run dir (for --export).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Data set, when the tables do not record it.")] = None,
    data_dir: DataDirOpt = None,
    export: Annotated[Optional[str], typer.Option("--export", help="Write the composite as a model run dir that robcli attack can load.")] = None,
    export_threshold: Annotated[Optional[list[str]], typer.Option("--export-threshold", help="Softmax-response export (--selector sr or sr-pointwise): threshold(s) of the exported selector (default: the --threshold).")] = None,
    export_inner_attack: Annotated[str, typer.Option("--export-inner-attack", help="Robustness-indicator and softmax-response (sr, eq. 16) export: the attack run inside every forward (ri: robustness at the input, pgd from x, batch-independent, or apgd-ce; sr: pgd minimising the max softmax).")] = "pgd",
    export_inner_steps: Annotated[int, typer.Option("--export-inner-steps", help="Robustness-indicator and sr export: steps of the inner attack.")] = 20,
    export_inner_restarts: Annotated[int, typer.Option("--export-inner-restarts", help="Robustness-indicator and sr export: starts of the inner attack (the first from x).")] = 1,
    steps: Annotated[Optional[int], typer.Option("--steps", help="PGD steps for confidences computed from --robust-model (default 50; 2 starts, the first from x); --mix-sweep: of the STD/ROB/MIX attacks (default 20).")] = None,
    mix: Annotated[Optional[str], typer.Option("--mix", help="Fixed-alpha mixture log((1-a) softmax(g) + a softmax(h)) (paper 002) of the MODELS --core g and --robust h, a in [0, 1]; written with --export RUN.")] = None,
    mix_sweep: Annotated[bool, typer.Option("--mix-sweep", help="Natural vs STD/ROB/MIX-attacked accuracy of fixed-alpha mixtures of the MODELS --core/--robust over an --alpha grid (002 Fig. 2/4).")] = False,
    alpha: Annotated[Optional[list[str]], typer.Option("--alpha", help="--mix-sweep grid values; repeatable (default 0, 0.1, ..., 1).")] = None,
    mix_space: MixSpaceOpt = "prob",
    scale_g: ScaleGOpt = 1.0,
    scale_h: ScaleHOpt = 1.0,
    split: SplitOpt = "test",
    n_ex: NExOpt = None,
    skip: SkipOpt = 0,
    batch: Annotated[int, typer.Option("--batch", "--batch-size", help="--mix-sweep: examples per attack batch.")] = 256,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate H(x) = S(x) F_robust(x) + (1 - S(x)) F_core(x) (and cascades) from per-example tables.

    Soundness rule: an example counts as robust and accurate for H only when the selector's decision cannot
    flip inside B_eps(x) and the model it routes to is robust and accurate there. Robust selection needs the
    2*eps rule (eq. 14): S(x') = 1 on all of B_eps(x) iff the robust model is robust on B_2eps(x), so pass its
    eps and 2*eps tables (-r EPS_TABLE,2EPS_TABLE, one model). Where the selector may select somewhere in the
    ball without robustly selecting, the robust model must be right at x (robustness indicator; softmax
    response with threshold > 0.5) or robust and accurate (sr-pointwise; sr with threshold <= 0.5), and the
    core model must be robust and accurate at eps (the abstain case; robust abstention is never claimed).
    Softmax response (--selector sr, eq. 16): x is selected when the lowest max-softmax on B_eps(x) is >= the
    threshold and robustly selected when it is on B_2eps(x); the lowest max-softmax comes from APGD-conf and
    every other attack row at that radius (and --robust-model), capped at 0.5 where an attack flipped the
    prediction. --selector sr-pointwise selects on the max-softmax at x alone (not eq. 16) and robustly
    selects when the lowest max-softmax on B_eps(x) is >= the threshold. Certified selector: robust selection
    is radius >= 2*eps by default; --selection-check eps gives the paper's radius >= eps (not sound for the
    selector).

    Certify tables (-r/-c CERT.parquet): each certificate fails with probability up to its alpha, and one
    example's claim can rest on up to m + 1 of them (m robust members and the core), so the composition's
    failure probability per example is up to the sum of their alphas (union bound), recorded as
    composition_alpha (column and config). For a composition-level alpha A, certify each table at
    A / (m + 1).

    With --mix or --mix-sweep, --core/--robust are models and the fixed-alpha mixture of paper 002 is built
    (same code as `robcli mix build`) or swept over alpha (same code as `robcli mix sweep`).
    """
    from robcli.errors import UsageError

    mix_only = {"--alpha": bool(alpha), "--mix-space": mix_space != "prob", "--scale-g": scale_g != 1.0,
                "--scale-h": scale_h != 1.0, "--split": split != "test", "--n-ex": n_ex is not None,
                "--skip": skip != 0, "--batch": batch != 256}
    if mix is not None or mix_sweep:
        table_only = {"--selector": selector != "ri", "--threshold": bool(threshold), "--sweep": do_sweep,
                      "--sigma": sigma is not None, "--selection-check": check != "2eps",
                      "--robust-model": bool(robust_model), "--core-model": core_model is not None,
                      "--export-threshold": bool(export_threshold),
                      "--export-inner-attack": export_inner_attack != "pgd", "--export-inner-steps": export_inner_steps != 20,
                      "--export-inner-restarts": export_inner_restarts != 1}
        _compose_mix(mix=mix, mix_sweep=mix_sweep, robust=robust, core=core, eps=eps, out=out, export=export,
                     dataset=dataset, data_dir=data_dir, alpha=alpha, mix_space=mix_space, scale_g=scale_g,
                     scale_h=scale_h, norm=norm, steps=steps, split=split, n_ex=n_ex, skip=skip, batch=batch,
                     device=device, seed=seed, force=force, quiet=quiet, table_only=table_only)
        return
    given = [f for f, on in mix_only.items() if on]
    if given:
        raise UsageError(f"{', '.join(given)} belong to --mix/--mix-sweep (mixtures of models)")
    if eps is None:
        raise UsageError("missing --eps (the threat radius of the composition)")
    if steps is None:
        steps = 50
    import pandas as pd

    from robcli.analysis.metrics import check_same_examples, view_from_table
    from robcli.compose.evaluate import evaluate_composition, sweep
    from robcli.compose.selectors import SR_NAME, parse_selector, ri_member, sr_member, sr_pointwise_member
    from robcli.errors import TableError
    from robcli.report.render import markdown_table
    from robcli.tables.io import provenance, write_table
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
        if sel == "sr-pointwise" and (export_inner_attack != "pgd" or export_inner_steps != 20 or export_inner_restarts != 1):
            raise UsageError("--export-inner-* belong to exports that run an inner attack (--selector ri or sr); "
                             "sr-pointwise selects on the clean confidence")
        if export_inner_steps < 1 or export_inner_restarts < 1:
            raise UsageError("--export-inner-steps and --export-inner-restarts must be >= 1")
        if sel != "ri" and not exp_taus and len(taus) != 1:
            raise UsageError("--export with a threshold sweep: choose the exported threshold with --export-threshold")
    for p in (out,):
        if p is not None:
            check_out(p, force)
    if export is not None:
        check_out(export, force)

    core_t = _read_many(core)
    core_v = view_from_table(core_t, e, norm=nrm, sigma=sigma)
    rob_ts = [_read_many(r) for r in robust]
    for run, t in [*zip(robust_model or [], rob_ts), *([(core_model, core_t)] if core_model else [])]:
        _check_run_matches_table(run, t)
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
        confs = _confidences(rob_ts, views_eps, robust, robust_model, radii, steps, device, seed, data_dir, dataset)

        def make_members(tau: float):
            if sel == "sr":  # eq. 16: B_eps decides the selection, the check ball (B_2eps) robust selection
                return [sr_member(v, cc, lows[0], lows[-1], tau, name) for v, (cc, lows), name in zip(views_eps, confs, names)]
            return [sr_pointwise_member(v, cc, lows[0], tau, name) for v, (cc, lows), name in zip(views_eps, confs, names)]

        rows = sweep(make_members, taus, core_v)
        for m in rows:
            m["selector"] = SR_NAME[sel]
    df = pd.DataFrame(rows)
    df["eps"] = e
    df["norm"] = core_v.norm
    df["selection_check"] = check
    certs = _certificates([*(("robust", spec, t, v) for spec, t, v in zip(robust, rob_ts, views_eps)),
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
    lead = ["selector", "threshold", "eps", "nat_acc", "robust_acc", "robust_selection", "selected_robust_acc",
            "robust_inaccuracy", "delta_nat_acc", "delta_robust_acc"]
    df = df[lead + [c for c in df.columns if c not in lead]]

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
    if out is not None:
        prov = provenance(data=core_t.meta.get("data"), command=argv(), seed=seed)
        # one flat list of {path, sha256, ...} entries as in every other table, each tagged with its role
        prov["models"] = [{**m, "role": role} for role, t in [*(("robust", t) for t in rob_ts), ("core", core_t)]
                          for m in (t.meta.get("models") or []) if isinstance(m, dict)]
        write_table(df, out, "compose", config=config, prov=prov)
    if card is not None:
        from pathlib import Path

        from robcli.compose.export import write_card

        try:
            write_card(export, card)
        except BaseException:
            if out is not None:
                Path(out).unlink(missing_ok=True)  # nothing written on error
            raise
        if not quiet:
            taus_txt = ", ".join(f"{m_['threshold']:g}" for m_ in card["composite"]["members"]) if sel != "ri" else ""
            what = {"sr": f"softmax response (eq. 16) at thresholds {taus_txt}, lowest confidence on B_eps by "
                          f"{export_inner_attack} ({export_inner_steps} steps) at eps={e:g}",
                    "sr-pointwise": f"pointwise softmax response at thresholds {taus_txt}",
                    "ri": f"robustness indicator by {export_inner_attack} ({export_inner_steps} steps) at eps={e:g}"}[sel]
            typer.echo(f"wrote composite model {export} ({what})", err=True)
    if not quiet and certs:
        typer.echo(f"composition_alpha {comp_alpha:g}: one example's claim rests on up to {len(certs)} certificates "
                   f"(union bound of their alphas); certify each table at A/{len(certs)} for a composition-level alpha A",
                   err=True)
    if not quiet:
        show = df[lead + ["core_nat_acc", "core_robust_acc"]]
        typer.echo(markdown_table(show))


def _require_models(**specs: str) -> None:
    """--mix/--mix-sweep mix models: refuse table paths (a .parquet file or a folder of shards) early."""
    from pathlib import Path

    from robcli.errors import UsageError

    for flag, spec in specs.items():
        p = Path(spec)
        shards = p.is_dir() and not (p / "card.json").exists() and any(p.glob("*.parquet"))
        if p.suffix == ".parquet" or ".parquet," in spec or shards:
            raise UsageError(f"--mix/--mix-sweep take models (run dirs or checkpoints), not tables: {flag} {spec}")


def _compose_mix(*, mix, mix_sweep, robust, core, eps, out, export, dataset, data_dir, alpha, mix_space, scale_g,
                 scale_h, norm, steps, split, n_ex, skip, batch, device, seed, force, quiet, table_only) -> None:
    """`compose --mix` = `mix build`, `compose --mix-sweep` = `mix sweep` (shared code in robcli.cli.mix)."""
    from robcli.cli import mix as mix_cli
    from robcli.errors import UsageError

    if mix is not None and mix_sweep:
        raise UsageError("give --mix ALPHA (export one mixture) or --mix-sweep (evaluate an --alpha grid), not both")
    given = [f for f, on in table_only.items() if on]
    if given:
        raise UsageError(f"{', '.join(given)} belong to table compositions, not to --mix/--mix-sweep")
    if len(robust) != 1:
        raise UsageError(f"--mix/--mix-sweep mix one --robust model with the --core model (got {len(robust)})")
    _require_models(**{"--core": core, "--robust": robust[0]})
    if mix is not None:
        sweep_only = {"--out": out is not None, "--eps": eps is not None, "--alpha": bool(alpha),
                      "--dataset": dataset is not None, "--norm": norm is not None, "--steps": steps is not None,
                      "--split": split != "test", "--n-ex": n_ex is not None, "--skip": skip != 0,
                      "--batch": batch != 256}
        given = [f for f, on in sweep_only.items() if on]
        if given:
            raise UsageError(f"{', '.join(given)} belong to --mix-sweep; --mix ALPHA only exports the mixture (--export RUN)")
        if export is None:
            raise UsageError("--mix needs --export RUN (the run directory of the mixture)")
        from robcli.mixing.mixed import check_alpha
        from robcli.utils.parse import parse_float_expr

        check_alpha(parse_float_expr(mix, "--mix"), "--mix")  # named as the user spelled it
        mix_cli.build_cmd(core=core, robust=robust[0], alpha=mix, export=export, mix_space=mix_space,
                          scale_g=scale_g, scale_h=scale_h, force=force, quiet=quiet)
        return
    if export is not None:
        raise UsageError("--mix-sweep writes a table (--out T.parquet); to export one mixture use --mix ALPHA --export RUN")
    if dataset is None or eps is None:
        raise UsageError("--mix-sweep needs --dataset and --eps")
    mix_cli.sweep_cmd(core=core, robust=robust[0], dataset=dataset, eps=eps, out=out, alpha=alpha,
                      steps=20 if steps is None else steps, norm=norm or "Linf", mix_space=mix_space, scale_g=scale_g,
                      scale_h=scale_h, split=split, n_ex=n_ex, skip=skip, batch=batch, data_dir=data_dir,
                      device=device, seed=seed, force=force, quiet=quiet)


def _check_run_matches_table(run: str, table) -> None:
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


def _certificates(entries, sigma) -> list[dict]:
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


def _confidences(tables, views, specs, runs, radii, steps, device, seed, data_dir, dataset):
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
