import re
from pathlib import Path

import pytest

from robcli.errors import UsageError
from robcli.recipes import is_up_to_date, load_recipe, run_recipe

RECIPE = """
[recipe]
name = "t"
out = "{root}"

[vars]
eps = "0.05"

[[step]]
name = "train-{{seed}}"
command = "finetune"
matrix = {{ seed = [0, 1] }}
args = {{ loss = "std", seed = "{{seed}}", out = "{{out}}/m{{seed}}", quiet = true, resume = false, eps = ["{{eps}}", "2/255"] }}

[[step]]
name = "attack"
command = "attack"
args = {{ model = "{{out}}/m0", out = "{{out}}/a.parquet" }}
"""


def _write(tmp_path, text=RECIPE):
    p = tmp_path / "r.toml"
    p.write_text(text.replace("{root}", str(tmp_path / "out")).replace("{{", "{").replace("}}", "}"))
    return p


def test_expansion_and_argv(tmp_path):
    rec = load_recipe(_write(tmp_path))
    assert [s.name for s in rec.steps] == ["train-0", "train-1", "attack"]
    a = rec.steps[1].argv
    assert a[:1] == ["finetune"] and "--quiet" in a and "--resume" not in a
    assert a[a.index("--seed") + 1] == "1"
    assert [a[i + 1] for i, t in enumerate(a) if t == "--eps"] == ["0.05", "2/255"]
    assert rec.steps[2].depends_on == ["train-0"]


def test_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_recipe(tmp_path / "nope.toml")
    bad = tmp_path / "b.toml"
    bad.write_text("[[step]]\ncommand = 'train'\n")
    with pytest.raises(UsageError, match="unknown command"):
        load_recipe(bad)
    bad.write_text("[[step]]\ncommand = 'attack'\nargs = { out = '{nope}' }\n")
    with pytest.raises(UsageError, match="unknown variable"):
        load_recipe(bad)
    bad.write_text("[[step\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_recipe(bad)


def _fake_exec(calls):
    def execute(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        if argv[0] == "finetune":
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("x")
        return 0

    return execute


def test_skip_force_and_dependencies(tmp_path):
    p = _write(tmp_path)
    calls = []
    res = run_recipe(load_recipe(p), _fake_exec(calls))
    assert [s for _, s in res] == ["ran", "ran", "ran"]
    calls.clear()
    res = run_recipe(load_recipe(p), _fake_exec(calls))
    assert [s for _, s in res] == ["skipped"] * 3 and calls == []
    # a changed config re-runs that step and whatever depends on it
    p.write_text(p.read_text().replace('eps = "0.05"', 'eps = "0.06"'))
    res = run_recipe(load_recipe(p), _fake_exec(calls))
    assert [s for _, s in res] == ["ran", "ran", "ran"]
    assert all("--force" in c for c in calls)  # outputs existed: replaced explicitly
    calls.clear()
    res = run_recipe(load_recipe(p), _fake_exec(calls), force=True)
    assert [s for _, s in res] == ["ran"] * 3
    assert all(is_up_to_date(s) for s in load_recipe(p).steps)


def test_failure_stops(tmp_path):
    calls = []
    res = run_recipe(load_recipe(_write(tmp_path)), lambda argv: calls.append(argv) or 3)
    assert res[-1][1] == "failed" and len(calls) == 1


def test_cli_dry_run_and_errors(cli, tmp_path):
    r = cli("run", str(_write(tmp_path)), "--dry-run")
    assert r.exit_code == 0, r.output
    assert "would run" in r.output and "robcli finetune" in r.output
    r = cli("run", str(tmp_path / "missing.toml"))
    assert r.exit_code == 2 and "does not exist" in r.output
    r = cli("run", str(_write(tmp_path)), "--only", "zzz")
    assert r.exit_code == 2 and "unknown step" in r.output


# ---- certify summaries ---------------------------------------------------------------------------------


def _cert_table(path, predict, radius, mode="certify"):
    import pandas as pd

    from robcli.tables import write_table

    n = len(predict)
    df = pd.DataFrame({"idx": range(n), "label": range(n), "predict": predict, "radius": radius,
                       "correct": [p == i for i, p in enumerate(predict)], "time": 0.0, "sigma": 0.12, "N0": 10,
                       "N": 100, "alpha": 0.01, "nA": 90, "pA_lower": 0.9, "mode": mode})
    write_table(df, path, "certify", config={})


def test_summarize_certify_tables_mean_and_std(tmp_path):
    from robcli.recipes import summarize_certify_tables

    _cert_table(tmp_path / "c-s0.parquet", [0, 2, -1, 3], [0.3, 0.5, 0.0, 0.05])
    _cert_table(tmp_path / "c-s1.parquet", [0, 1, -1, -1], [0.3, 0.2, 0.0, 0.0])
    df = summarize_certify_tables([{"label": "m", "tables": str(tmp_path / "c-s*.parquet")}], [0, 0.1])
    assert list(df["radius"]) == [0.0, 0.1] and (df["n_tables"] == 2).all() and (df["n"] == 4).all()
    r0, r1 = df.iloc[0], df.iloc[1]
    assert r0["certified_acc"] == 0.5 and r0["certified_acc_std"] == 0
    assert r0["certified_robust_inacc"] == pytest.approx(0.125)
    assert r0["certified_robust_inacc_std"] == pytest.approx(0.125 * 2 ** 0.5)
    assert r0["abstain"] == pytest.approx(0.375)
    assert r1["certified_acc"] == pytest.approx(0.375) and r1["certified_robust_inacc"] == pytest.approx(0.125)
    # default radii: 0, sigma/2, sigma, 2 sigma; a predict table reports r = 0 only
    d = summarize_certify_tables([{"label": "m", "tables": str(tmp_path / "c-s0.parquet")}])
    assert list(d["radius"]) == pytest.approx([0, 0.06, 0.12, 0.24]) and (d["n_tables"] == 1).all()
    _cert_table(tmp_path / "p.parquet", [0, 1, -1, 2], [0.0] * 4, mode="predict")
    p = summarize_certify_tables([{"label": "p", "tables": str(tmp_path / "p.parquet")}], [0, 0.1])
    assert list(p["radius"]) == [0.0] and p["mode"].iloc[0] == "predict" and p["certified_acc"].iloc[0] == 0.5
    with pytest.raises(UsageError, match="no table matches"):
        summarize_certify_tables([{"label": "x", "tables": str(tmp_path / "none*.parquet")}])


def test_summary_kind_and_radii_are_checked(tmp_path):
    base = RECIPE.replace("{root}", str(tmp_path / "out")).replace("{{", "{").replace("}}", "}")
    p = tmp_path / "r.toml"
    p.write_text(base + '\n[[summary]]\nkind = "attacks"\nrows = []\n')
    with pytest.raises(UsageError, match="unknown kind 'attacks'"):
        load_recipe(p)
    p.write_text(base + '\n[[summary]]\nkind = "certify"\nradii = [0, -1]\nrows = []\n')
    with pytest.raises(UsageError, match="radii must be"):
        load_recipe(p)


CERT_RECIPE = """
[recipe]
name = "cert"
out = "{root}"

[[step]]
name = "certify-s{seed}"
command = "certify"
matrix = { seed = [0, 1] }
args = { model = "tiny_cnn", dataset = "digits", n_ex = 4, sigma = [0.12, 0.25], N0 = 10, N = 200, alpha = 0.01, seed = "{seed}", quiet = true, out = "{out}/c-s{seed}.parquet" }

[[summary]]
kind = "certify"
title = "tiny certified summary"
radii = [0, 0.1]
rows = [ { label = "tiny_cnn", tables = "{out}/c-s*.parquet" } ]
note = "certify note"
"""


def test_cli_run_prints_certify_summary(cli, tmp_path):
    from robcli.recipes import summarize_certify_tables

    p = tmp_path / "cert.toml"
    p.write_text(CERT_RECIPE.replace("{root}", str(tmp_path / "out")))
    r = cli("run", str(p))
    assert r.exit_code == 0, r.output
    assert "tiny certified summary" in r.output and "cert. acc" in r.output and "certify note" in r.output
    assert re.search(r"certified\s+robust\s+inaccuracy", r.output)
    df = summarize_certify_tables([{"label": "t", "tables": str(tmp_path / "out" / "c-s*.parquet")}], [0, 0.1])
    assert len(df) == 4 and (df["n_tables"] == 2).all()  # 2 sigmas x 2 radii, each over 2 seeds
    first = df.iloc[0]
    shown = f"{100 * first['certified_acc']:.1f} ± {100 * first['certified_acc_std']:.1f}"
    assert shown in r.output
    # next to it, its (1 - rho) lower confidence bound (rho = 0.001 by default)
    assert "0.999" in r.output and "lower confidence bound" in " ".join(r.output.split())
    lower = f"{100 * first['certified_acc_lower']:.1f} ± {100 * first['certified_acc_lower_std']:.1f}"
    assert lower in r.output


@pytest.mark.parametrize("recipe", sorted(Path(__file__).resolve().parents[1].glob("recipes/*.toml")),
                         ids=lambda p: p.name)
def test_recipe_finetune_steps_pin_every_defaulted_flag(recipe, monkeypatch):
    """Issue 9, item 6: data sets recommend training defaults; a recipe's numbers must not move with them, so
    every finetune step gives each flag that has a data-set default (and the resolved config records no
    default taken from anywhere)."""
    from robcli.cli.finetune import TRAIN_FLAGS
    from robcli.train.config import FinetuneConfig

    rec = load_recipe(recipe)
    steps = [s for s in rec.steps if s.argv and s.argv[0] == "finetune"]
    assert steps
    seen = []

    def fake_finetune(cfg, *a, **k):  # stop at the resolved configuration: nothing is trained
        seen.append(cfg)
        raise KeyboardInterrupt

    import robcli.train.loop as loop

    monkeypatch.setattr(loop, "finetune", fake_finetune)
    from robcli.cli.main import invoke

    tried = set()
    for st in steps:
        flags = {a[2:].replace("-", "_") for a in st.argv if a.startswith("--")}
        # one resolution per distinct step shape (the matrix only varies seed, beta, out, init)
        shape = tuple(v for i, v in enumerate(st.argv)
                      if v not in ("--seed", "--beta", "--out", "--init")
                      and st.argv[i - 1] not in ("--seed", "--beta", "--out", "--init"))
        if shape in tried:
            continue
        tried.add(shape)
        mixnet = "mixnet" in st.argv
        need = ("epochs", "lr", "batch") if mixnet else TRAIN_FLAGS  # mixnet: AdamW, no momentum/decay/schedule
        missing = [f for f in need if f not in flags]
        assert not missing, f"{recipe.name} step {st.name} leaves {missing} to the defaults"
        if not mixnet:
            seen.clear()
            invoke([*st.argv, "--force"])
            assert len(seen) == 1 and isinstance(seen[0], FinetuneConfig), st.name
            assert seen[0].defaults_from == {}, (st.name, seen[0].defaults_from)
