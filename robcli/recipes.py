"""Recipes: whole pipelines as TOML files, run step by step.

A recipe::

    [recipe]
    name = "quickstart"
    out = "runs/quickstart"          # available as {out} in every string below

    [vars]                            # more {name} substitutions (plain text replacement, never evaluated)
    eps = "0.05"

    [[step]]
    name = "std-{seed}"              # names must be unique after matrix expansion
    command = "finetune"
    matrix = { seed = [0, 1, 2] }    # optional: one step per combination, {seed} substituted
    args = { loss = "std", dataset = "gaussians", seed = "{seed}", out = "{out}/std-s{seed}" }
    positional = []                   # optional positional arguments (e.g. tables for `report`)
    outputs = ["{out}/std-s{seed}"]  # optional: defaults to args.out

    [[summary]]                       # printed after the last step (attack tables -> accuracy table)
    title = "Gaussians"
    rows = [ { label = "std", tables = "{out}/attack-std-s*.parquet" } ]

    [[summary]]                       # certify tables -> certified accuracy table
    kind = "certify"
    title = "digits, randomized smoothing"
    radii = [0, 0.25, 0.5]            # optional L2 radii (default: 0, sigma/2, sigma, 2 sigma per sigma)
    rho = 0.001                       # optional: confidence statement of the certified accuracy (1 - rho)
    rows = [ { label = "noise", tables = "{out}/certify-noise-s*.parquet" } ]

Args become flags: ``key = value`` -> ``--key value`` (``_`` -> ``-``); ``true`` -> ``--key``; ``false`` ->
omitted; a list -> the flag repeated. A step is skipped when all its outputs exist and carry a stamp saying they
were made by the same command line with the same robcli version, and no step it depends on (one whose output
path appears in its arguments) was re-run. ``--force`` redoes everything.

Under torchrun or srun every rank runs the recipe in step: the main rank decides which steps are up to date;
``attack``, ``certify`` and ``finetune`` steps run on every rank (spread as those commands spread themselves:
:func:`spreads`), every other step (``partition``, ``compose``, ``report``, ``finetune --loss mixnet``,
``certify --import``) on the main rank alone while the others wait for its exit code.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from robcli.errors import UsageError

KNOWN_COMMANDS = ("finetune", "attack", "certify", "partition", "compose", "report")
SUMMARY_KINDS = ("attack", "certify")
STAMP_NAME = ".robcli-step.json"
_VAR = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Step:
    name: str
    command: str
    argv: list[str]
    outputs: list[Path]
    depends_on: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    name: str
    path: Path
    steps: list[Step]
    summaries: list[dict]
    variables: dict[str, str]


def _subst(value: Any, variables: dict[str, str], where: str) -> Any:
    if isinstance(value, str):
        def rep(m):
            k = m.group(1)
            if k not in variables:
                raise UsageError(f"recipe {where}: unknown variable {{{k}}}")
            return variables[k]

        return _VAR.sub(rep, value)
    if isinstance(value, list):
        return [_subst(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, variables, where) for k, v in value.items()}
    return value


def _to_argv(command: str, args: dict, positional: list) -> list[str]:
    argv = [command] + [str(p) for p in positional]
    for key, val in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(val, bool):
            if val:
                argv.append(flag)
        elif isinstance(val, list):
            for v in val:
                argv += [flag, str(v)]
        elif isinstance(val, dict):
            raise UsageError(f"recipe arg {key!r}: nested tables are not flags")
        else:
            argv += [flag, str(val)]
    return argv


def load_recipe(path: str | Path, overrides: dict[str, str] | None = None) -> Recipe:
    """Parse and expand a recipe file.

    Raises:
        UsageError: a missing or malformed file, an unknown command or variable, duplicate step names.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"recipe {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"recipe {path} is not valid TOML: {e}") from None
    head = data.get("recipe", {})
    variables = {k: str(v) for k, v in (data.get("vars") or {}).items()}
    variables["out"] = str(head.get("out", "runs/" + path.stem))
    variables.update(overrides or {})
    variables = {k: _subst(v, {**variables, k: ""}, "vars") if k != "out" else v for k, v in variables.items()}
    raw_steps = data.get("step") or []
    if not isinstance(raw_steps, list) or not raw_steps:
        raise UsageError(f"recipe {path} has no [[step]] entries")
    steps: list[Step] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_steps):
        command = raw.get("command")
        if command not in KNOWN_COMMANDS:
            raise UsageError(f"recipe step {i + 1}: unknown command {command!r}; choose one of {', '.join(KNOWN_COMMANDS)}")
        matrix = raw.get("matrix") or {}
        keys = list(matrix)
        combos = list(itertools.product(*[matrix[k] if isinstance(matrix[k], list) else [matrix[k]] for k in keys])) or [()]
        for combo in combos:
            local = dict(variables)
            local.update({k: str(v) for k, v in zip(keys, combo)})
            name = _subst(raw.get("name", f"{command}-{i + 1}" + "".join(f"-{v}" for v in combo)), local, f"step {i + 1}")
            if name in seen:
                raise UsageError(f"recipe {path}: duplicate step name {name!r}")
            seen.add(name)
            args = _subst(dict(raw.get("args") or {}), local, f"step {name!r}")
            positional = _subst(list(raw.get("positional") or []), local, f"step {name!r}")
            outs = raw.get("outputs")
            outs = _subst(outs, local, f"step {name!r}") if outs else ([args["out"]] if "out" in args else [])
            steps.append(Step(name, command, _to_argv(command, args, positional), [Path(o) for o in outs]))
    for j, st in enumerate(steps):
        text = " ".join(st.argv)
        for prev in steps[:j]:
            if any(str(o) and str(o) in text for o in prev.outputs):
                st.depends_on.append(prev.name)
    summaries = _subst(list(data.get("summary") or []), variables, "summary")
    for j, summ in enumerate(summaries):
        if not isinstance(summ, dict):
            raise UsageError(f"recipe {path}: [[summary]] {j + 1} is not a table")
        if summ.get("kind", "attack") not in SUMMARY_KINDS:
            raise UsageError(f"recipe {path}: [[summary]] {j + 1} has unknown kind {summ.get('kind')!r}; "
                             f"choose one of {', '.join(SUMMARY_KINDS)}")
        rho = summ.get("rho")
        if rho is not None and not (isinstance(rho, (int, float)) and not isinstance(rho, bool) and 0 < rho < 1):
            raise UsageError(f"recipe {path}: [[summary]] {j + 1}: rho must be a number in (0, 1)")
        radii = summ.get("radii")
        if radii is not None and not (isinstance(radii, list) and all(
                isinstance(r, (int, float)) and not isinstance(r, bool) and r >= 0 for r in radii)):
            raise UsageError(f"recipe {path}: [[summary]] {j + 1}: radii must be a list of numbers >= 0")
    return Recipe(str(head.get("name", path.stem)), path, steps, summaries, variables)


def _stamp_path(out: Path) -> Path:
    return out / STAMP_NAME if out.is_dir() else out.with_name(f".{out.name}{STAMP_NAME}")


def _stamp_value(step: Step) -> dict:
    from robcli import __version__

    return {"argv": step.argv, "robcli": __version__}


def is_up_to_date(step: Step) -> bool:
    if not step.outputs:
        return False
    for out in step.outputs:
        if not out.exists():
            return False
        try:
            stamp = json.loads(_stamp_path(out).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if stamp != _stamp_value(step):
            return False
    return True


def write_stamps(step: Step) -> None:
    for out in step.outputs:
        if out.exists():
            _stamp_path(out).write_text(json.dumps(_stamp_value(step)))


def _flag(argv: list[str], name: str) -> str | None:
    """The value of ``--name`` in a step's argv (the last one given), or None."""
    vals = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    return vals[-1] if vals else None


def spreads(step: Step) -> bool:
    """Whether a step's command spreads its work over the ranks of a launched job (attack, certify and finetune
    do; finetune --loss mixnet, certify --import and every other command run in one process)."""
    if step.command == "finetune":
        return _flag(step.argv, "--loss") != "mixnet"
    if step.command == "certify":
        return "--import" not in step.argv
    return step.command == "attack"


# the other ranks wait this long for a step that the main rank runs alone (a long mixnet training, say)
SOLO_TIMEOUT_S = 7 * 24 * 3600


def _on_main(world, fn: Callable[[], Any], timeout_s: float | None = None) -> Any:
    """``fn()`` on the main rank, its result (or error) on every rank (:func:`robcli.distributed.agree`)."""
    from robcli.distributed import CONTROL_TIMEOUT_S, Group, agree

    with Group(world, timeout_s=timeout_s or CONTROL_TIMEOUT_S) as group:
        return agree(group, fn)


def _alone(execute: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run one command line as a single process, whatever launcher started this one."""
    import os

    from robcli.distributed import DISTRIBUTED_ENV

    old = os.environ.get(DISTRIBUTED_ENV)
    os.environ[DISTRIBUTED_ENV] = "0"
    try:
        return execute(argv)
    finally:
        if old is None:
            os.environ.pop(DISTRIBUTED_ENV, None)
        else:
            os.environ[DISTRIBUTED_ENV] = old


def run_recipe(
    recipe: Recipe,
    execute: Callable[[list[str]], int],
    *,
    force: bool = False,
    only: list[str] | None = None,
    on_step: Callable[[Step, str], None] | None = None,
    world=None,
) -> list[tuple[Step, str]]:
    """Run the steps in order. ``execute(argv) -> exit code``. Returns (step, status) with status in
    ``ran``, ``skipped``, ``failed``; stops at the first failure.

    ``world``: where this process stands (:func:`robcli.distributed.detect`; default a single process). Under
    torchrun/srun the main rank decides what is up to date and writes the stamps; :func:`spreads` steps run on
    every rank, the others on the main rank alone. A failed step stops the recipe on the ranks where it failed
    (an error inside a spread command reaches every rank; one a rank meets alone ends that rank, and the launcher
    ends the job).
    """
    from robcli.distributed import World

    world = world if world is not None else World()
    rerun: set[str] = set()
    results = []
    for step in recipe.steps:
        if only and step.name not in only:
            continue
        stale_dep = any(d in rerun for d in step.depends_on)
        if _on_main(world, lambda st=step, stale=stale_dep: not force and not stale and is_up_to_date(st)):
            results.append((step, "skipped"))
            if on_step:
                on_step(step, "skipped")
            continue
        if on_step:
            on_step(step, "start")
        argv = list(step.argv)
        redo = any(out.exists() for out in step.outputs)
        if redo and step.command != "report" and "--force" not in argv and "--resume" not in argv:
            argv.append("--force")  # a redo replaces what is there (the stamp keeps the plain argv)
        if not world.grouped:
            code = execute(argv)
        elif spreads(step):
            # every error inside a spread command already reaches every rank (robcli.distributed's agree,
            # together, failed-rank files, heartbeats); one that a rank meets alone, before the command's process
            # group (its own data or GPU missing), stops this rank's recipe, and its exit ends the job
            code = execute(argv)
        else:
            code = _on_main(world, lambda a=argv: _alone(execute, a), timeout_s=SOLO_TIMEOUT_S)
        if code != 0:
            results.append((step, "failed"))
            if on_step:
                on_step(step, "failed")
            return results
        if world.is_main:
            write_stamps(step)
        rerun.add(step.name)
        results.append((step, "ran"))
        if on_step:
            on_step(step, "ran")
    return results


def summarize_attack_tables(rows: list[dict]) -> Any:
    """Accuracy summary of attack tables: one line per (label, eps), mean and std over matching files.

    Each row is ``{"label": str, "tables": glob pattern}``; every file matching the pattern is one seed. An example
    counts as robust at eps only if it is robust against every attack in the table at that eps (eq. 2, 3).
    Returns a DataFrame with columns label, eps, n_tables, nat_acc, nat_acc_std, robust_acc, robust_acc_std,
    robust_inacc, robust_inacc_std.
    """
    import pandas as pd

    from robcli.tables import read_table

    out = []
    for row in rows:
        per = []
        for f in _matching_tables(row):
            df = read_table(f, "attack").df
            g = df.groupby(["eps", "idx"]).agg(correct=("correct", "first"), robust=("robust", "all")).reset_index()
            for eps, sub in g.groupby("eps"):
                per.append({
                    "eps": float(eps),
                    "nat_acc": sub["correct"].mean(),
                    "robust_acc": (sub["correct"] & sub["robust"]).mean(),
                    "robust_inacc": (~sub["correct"] & sub["robust"]).mean(),
                })
        p = pd.DataFrame(per)
        for eps, sub in p.groupby("eps"):
            rec = {"label": row["label"], "eps": eps, "n_tables": len(sub)}
            for m in ("nat_acc", "robust_acc", "robust_inacc"):
                rec[m] = sub[m].mean()
                rec[m + "_std"] = sub[m].std(ddof=1) if len(sub) > 1 else 0.0
            out.append(rec)
    return pd.DataFrame(out)


def _matching_tables(row: dict) -> list[str]:
    import glob

    files = sorted(glob.glob(row["tables"]))
    if not files:
        raise UsageError(f"summary row {row.get('label')!r}: no table matches {row['tables']}")
    return files


def summarize_certify_tables(rows: list[dict], radii: list[float] | None = None, rho: float = 0.001) -> Any:
    """Certified-accuracy summary of certify tables: one line per (label, sigma, radius), mean and std over
    the files (or shard folders) matching each row's pattern (one per seed or model variant).

    Each row is ``{"label": str, "tables": glob pattern}``. ``radii``: L2 radii at which to report (default
    0, sigma/2, sigma and 2 sigma at each sigma; a predict-mode table reports r = 0 only), computed by
    :func:`robcli.certify.smoothing.summarize`: certified accuracy (predict == label and radius >= r),
    certified robust inaccuracy (predict not in {label, abstain} and radius >= r) and the abstain rate, and
    ``certified_acc_lower``: each table's ``1 - rho`` lower confidence bound on its certified accuracy
    (:func:`robcli.analysis.certified.certified_accuracy_lower` with the table's alpha and number of examples).
    Returns a DataFrame with columns label, sigma, radius, mode, n_tables, n, and certified_acc,
    certified_acc_lower, certified_robust_inacc, abstain, each with a ``_std`` column (0 for a single table).
    """
    import pandas as pd

    from robcli.analysis.certified import certified_accuracy_lower, check_rho
    from robcli.certify.smoothing import summarize
    from robcli.tables import read_table

    rho = check_rho(rho)
    metrics = ("certified_acc", "certified_acc_lower", "certified_robust_inacc", "abstain")
    out = []
    for row in rows:
        per = []
        for f in _matching_tables(row):
            df = read_table(f, "certify").df
            if len(df) == 0:
                continue
            s = summarize(df) if radii is None else summarize(df, radii=radii)
            s["mode"] = "certify" if (df["mode"] == "certify").all() else "predict"
            alpha = df.groupby("sigma")["alpha"].max()  # the conservative alpha if rows differ
            s["certified_acc_lower"] = [certified_accuracy_lower(a, int(n), float(alpha.loc[sg]), rho)
                                        for a, n, sg in zip(s["certified_acc"], s["n"], s["sigma"])]
            per.append(s)
        if not per:
            raise UsageError(f"summary row {row.get('label')!r}: the tables matching {row['tables']} hold no rows")
        p = pd.concat(per, ignore_index=True)
        for (sigma, radius, mode), sub in p.groupby(["sigma", "radius", "mode"], sort=True):
            rec = {"label": row["label"], "sigma": sigma, "radius": radius, "mode": mode, "n_tables": len(sub),
                   "n": int(sub["n"].sum() // len(sub))}
            for m in metrics:
                rec[m] = float(sub[m].mean())
                rec[m + "_std"] = float(sub[m].std(ddof=1)) if len(sub) > 1 else 0.0
            out.append(rec)
    cols = ["label", "sigma", "radius", "mode", "n_tables", "n"] + [c for m in metrics for c in (m, m + "_std")]
    return pd.DataFrame(out, columns=cols)
