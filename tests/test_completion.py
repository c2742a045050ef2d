"""Shell completion: robcli.names equals the live registries, completion lists the registered names for the
flags that take them, and neither importing robcli.names nor a TAB press imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from robcli import names

ROOT = Path(__file__).resolve().parents[1]


def test_names_equal_the_live_registries():
    from robcli.attacks import ATTACKS
    from robcli.attacks.aa import AA_VERSIONS
    from robcli.certify.smoothing import MODES
    from robcli.compose.export import INNER_ATTACKS
    from robcli.compose.selectors import list_selectors
    from robcli.data.registry import list_datasets
    from robcli.losses import list_losses
    from robcli.mixing.train import TRAIN_SETTINGS
    from robcli.models.registry import list_models
    from robcli.report.render import FORMATS
    from robcli.utils.parse import NORMS

    assert names.DATASETS == tuple(list_datasets())
    assert names.MODELS == tuple(list_models())
    assert names.LOSSES == tuple(list_losses())
    assert names.ATTACKS == tuple(sorted(a.lower() for a in ATTACKS))
    assert names.SELECTORS == tuple(list_selectors())
    assert names.NORMS == tuple(NORMS)
    assert names.AA_VERSIONS == tuple(AA_VERSIONS)
    assert names.TRAIN_SETTINGS == tuple(TRAIN_SETTINGS)
    assert names.INNER_ATTACKS == tuple(INNER_ATTACKS)
    assert names.CERTIFY_MODES == tuple(MODES)
    assert names.REPORT_FORMATS == (*FORMATS, "cohen-tsv")


# every Registry robcli defines (module, variable) -> its torch-free copy in robcli.names, and the extra names a
# command takes beyond the registry (finetune --loss mixnet: robcli.losses.ROUTED)
REGISTRIES = {
    ("robcli.data.registry", "DATASETS"): ("DATASETS", ()),
    ("robcli.models.registry", "MODELS"): ("MODELS", ()),
    ("robcli.losses", "LOSSES"): ("LOSSES", ("mixnet",)),
    ("robcli.attacks.engine", "ATTACK_REGISTRY"): ("ATTACKS", ()),
    ("robcli.compose.selectors", "SELECTORS"): ("SELECTORS", ()),
}


def _registries_in_source() -> set[tuple[str, str]]:
    """(module, variable) of every module-level ``X = Registry(...)`` in robcli/ (read, not imported)."""
    import ast

    found = set()
    for path in (ROOT / "robcli").rglob("*.py"):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.parse(path.read_text()).body:
            target = node.target if isinstance(node, ast.AnnAssign) else (
                node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
            value = getattr(node, "value", None)
            if (isinstance(target, ast.Name) and isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                    and value.func.id == "Registry"):
                found.add((mod, target.id))
    return found


def test_every_registry_has_its_names_in_robcli_names():
    import importlib

    from robcli.utils.registry import Registry

    assert _registries_in_source() == set(REGISTRIES), "a Registry without its tuple in robcli.names (or gone)"
    for (mod, var), (tuple_name, extra) in REGISTRIES.items():
        reg = getattr(importlib.import_module(mod), var)
        assert isinstance(reg, Registry)
        live = sorted({n.lower() if reg._normalize else n for n in reg.names()} | set(extra))
        assert getattr(names, tuple_name) == tuple(live), (mod, var)


def test_names_notices_a_new_registration(monkeypatch):
    """Negative control: a data set registered without its name in robcli.names makes the comparison fail."""
    import robcli.data.registry as reg

    real = reg.list_datasets()
    monkeypatch.setattr(reg, "list_datasets", lambda: sorted([*real, "newset"]))
    assert names.DATASETS != tuple(reg.list_datasets())
    # and a selector registered without its name there fails the registry-wide check
    from robcli.compose.selectors import SELECTORS

    monkeypatch.setitem(SELECTORS._entries, "new-selector", SELECTORS._entries["ri"])
    with pytest.raises(AssertionError, match="robcli.compose.selectors"):
        test_every_registry_has_its_names_in_robcli_names()


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("_ROBCLI", "_TYPER", "COMP_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# run the entry point as the shell script does, then report whether torch got imported
_PROBE = ("import sys\nfrom robcli.cli.main import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
          "sys.stderr.write('TORCH=%s' % ('torch' in sys.modules))\n")


def complete(words: str, shell: str = "bash") -> tuple[list[str], bool]:
    """The values ``robcli`` offers for the command line ``words`` (the last word being completed), and
    whether answering imported torch."""
    if shell == "bash":
        parts = words.split(" ")
        env = _env(_ROBCLI_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(len(parts) - 1))
    else:
        env = _env(_ROBCLI_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS=words)
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert "TORCH=" in r.stderr, r.stderr
    return [ln for ln in r.stdout.splitlines() if ln], "TORCH=True" in r.stderr


def test_completing_attack_names_lists_apgd_without_importing_torch():
    got, torch_loaded = complete("robcli attack --attack ap")
    assert got == [a for a in names.ATTACKS if a.startswith("ap")] == ["apgd-ce", "apgd-conf", "apgd-dlr", "apgd-t"]
    assert not torch_loaded


@pytest.mark.parametrize("words,want", [
    ("robcli fin", ["finetune"]),
    ("robcli certify --dataset ", list(names.DATASETS)),
    ("robcli attack -d ci", ["cifar10", "cifar100"]),
    ("robcli finetune --loss ", list(names.LOSSES)),
    ("robcli finetune --arch wrn", ["wrn-28-10", "wrn-34-10", "wrn_tiny"]),
    ("robcli certify --model res", ["resnet18", "resnet18_tiny", "resnet50"]),
    ("robcli certify --model runs/", []),  # no architecture matches: the shell completes file names
    ("robcli compose --selector ", list(names.SELECTORS)),
    ("robcli partition --attack apgd-c", ["apgd-ce", "apgd-conf"]),
    ("robcli report --format co", ["cohen-tsv"]),
    ("robcli attack --attack mix-", ["mix-a", "mix-b", "mix-c", "mix-d"]),
    ("robcli certify --norm ", list(names.NORMS)),
    ("robcli list ", list(names.LISTS)),
])
def test_completion_lists_the_registered_names(words, want):
    got, torch_loaded = complete(words)
    assert got == want and not torch_loaded


def test_zsh_completion_and_file_fallback():
    r = subprocess.run([sys.executable, "-m", "robcli"], env=_env(_ROBCLI_COMPLETE="complete_zsh",
                       _TYPER_COMPLETE_ARGS="robcli attack --attack square"), capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert '"square"' in r.stdout
    r = subprocess.run([sys.executable, "-m", "robcli"], env=_env(_ROBCLI_COMPLETE="complete_zsh",
                       _TYPER_COMPLETE_ARGS="robcli certify --model runs/"), capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.stdout.strip() == "_files"


def test_importing_robcli_names_imports_nothing_heavy():
    code = ("import sys, robcli.names\n"
            "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'typer') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_show_and_install_completion_are_offered(cli):
    r = cli("--help")
    assert "--install-completion" in r.output and "--show-completion" in r.output
    r = subprocess.run([sys.executable, "-m", "robcli", "--show-completion", "bash"], env=_env(),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "_ROBCLI_COMPLETE=complete_bash" in r.stdout and "complete -o default" in r.stdout
