"""`robcli run RECIPE.toml`: run a whole pipeline, skipping steps that are up to date."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from robcli.cli.common import console, handle_errors


@handle_errors
def run(
    ctx: typer.Context,
    recipe: Annotated[str, typer.Argument(help="Recipe TOML file (see recipes/quickstart.toml).")],
    force: Annotated[bool, typer.Option("--force", help="Redo every step even if its outputs are up to date.")] = False,
    only: Annotated[Optional[list[str]], typer.Option("--only", help="Run only the named step(s).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Override the recipe's output folder {out}.")] = None,
    var: Annotated[Optional[list[str]], typer.Option("--var", help="Override a recipe variable: NAME=VALUE.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands and whether each would run.")] = False,
) -> None:
    """Run RECIPE's steps in order; each step is a robcli command line. Ends with the recipe's summaries."""
    from rich.table import Table

    invoke = ctx.find_root().obj["invoke"]
    from robcli.errors import UsageError
    from robcli.recipes import (
        is_up_to_date,
        load_recipe,
        run_recipe,
        summarize_attack_tables,
        summarize_certify_tables,
    )

    overrides = {}
    for v in var or []:
        if "=" not in v:
            raise UsageError(f"--var {v!r} must look like NAME=VALUE")
        k, val = v.split("=", 1)
        overrides[k.strip()] = val
    if out:
        overrides["out"] = out
    rec = load_recipe(recipe, overrides)
    from robcli.distributed import detect

    world = detect()  # torchrun/srun: every rank runs the recipe in step (robcli.recipes.run_recipe), rank 0 talks
    if world.launcher == "array":
        raise UsageError("robcli run in a SLURM job array: array tasks only leave parts for robcli merge, so the "
                         "next step would find no table; launch the recipe with srun (or torchrun) instead")
    con = console(stderr=True)
    if only:
        unknown = [n for n in only if n not in {s.name for s in rec.steps}]
        if unknown:
            raise UsageError(f"--only names unknown step(s): {', '.join(unknown)}")
    if dry_run:  # rank 0 alone answers (nothing runs)
        for st in rec.steps if world.is_main else ():
            state = "up to date" if (not force and is_up_to_date(st)) else "would run"
            typer.echo(f"[{state}] {st.name}: robcli {' '.join(st.argv)}")
        return
    if not world.is_main:
        results = run_recipe(rec, invoke, force=force, only=only, world=world)
        if results and results[-1][1] == "failed":
            raise typer.Exit(2)  # rank 0 says which step failed
        return
    con.rule(f"[bold]recipe {rec.name}[/] ({len(rec.steps)} steps, outputs in {rec.variables['out']})")
    t0 = time.perf_counter()
    starts: dict[str, float] = {}

    def on_step(step, status):
        if status == "start":
            starts[step.name] = time.perf_counter()
            con.print(f"[bold cyan]▶ {step.name}[/]  robcli {' '.join(step.argv)}")
        elif status == "skipped":
            con.print(f"[dim]✓ {step.name}: up to date, skipped[/]")
        elif status == "ran":
            con.print(f"[green]✓ {step.name}[/] ({time.perf_counter() - starts[step.name]:.1f} s)")
        elif status == "failed":
            con.print(f"[bold red]✗ {step.name} failed[/]")

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    n_steps = len([s for s in rec.steps if not only or s.name in only])
    with Progress(TextColumn("[bold]recipe {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=con, transient=True) as bar:
        task = bar.add_task(rec.name, total=n_steps)

        def on_step_bar(step, status):
            on_step(step, status)
            if status in ("ran", "skipped", "failed"):
                bar.advance(task)

        results = run_recipe(rec, invoke, force=force, only=only, on_step=on_step_bar, world=world)
    if results and results[-1][1] == "failed":
        raise UsageError(f"recipe stopped: step {results[-1][0].name!r} failed (fix it and run again; finished steps are kept)")
    def fmt(r, m):
        s = f"{100 * r[m]:.1f}"
        return s + (f" ± {100 * r[m + '_std']:.1f}" if r["n_tables"] > 1 else "")

    for summ in rec.summaries:
        kind = summ.get("kind", "attack")
        tab = Table(title=summ.get("title", "summary"))
        if kind == "certify":
            rho = float(summ.get("rho", 0.001))
            df = summarize_certify_tables(summ.get("rows", []), summ.get("radii"), rho=rho)
            tab.add_column("model", justify="left")
            for col in ("sigma", "radius", "seeds"):
                tab.add_column(col, justify="right")
            for col in ("cert. acc", f"≥ w.p. {1 - rho:g}", "rob. inacc", "abstain"):
                tab.add_column(col, justify="right", no_wrap=True)
            for _, r in df.iterrows():
                radius = f"{r['radius']:.4g}" if r["mode"] == "certify" else "0 (pred.)"
                tab.add_row(str(r["label"]), f"{r['sigma']:.4g}", radius, str(r["n_tables"]),
                            fmt(r, "certified_acc"), fmt(r, "certified_acc_lower"),
                            fmt(r, "certified_robust_inacc"), fmt(r, "abstain"))
            ns = sorted(set(df["n"]))
            tab.caption = (f"{'/'.join(map(str, ns))} examples per table; L2 radius; cert. acc: correct and "
                           f"certified at the radius; ≥ w.p. {1 - rho:g}: lower confidence bound on it given the "
                           "per-example failure probability alpha (exact binomial, see report); rob. inacc: wrong "
                           "but certified (certified robust inaccuracy)")
        else:
            df = summarize_attack_tables(summ.get("rows", []))
            for col in ("model", "eps", "seeds", "natural acc", "robust acc", "robust inacc"):
                tab.add_column(col, justify="right" if col != "model" else "left")
            for _, r in df.iterrows():
                tab.add_row(str(r["label"]), f"{r['eps']:.4g}", str(r["n_tables"]), fmt(r, "nat_acc"),
                            fmt(r, "robust_acc"), fmt(r, "robust_inacc"))
        con.print(tab)
        note = summ.get("note")
        if note:
            con.print(f"[dim]{note}[/]")
    con.print(f"[bold]done[/] in {time.perf_counter() - t0:.1f} s (accuracies in %, mean ± std over seeds)")
