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
