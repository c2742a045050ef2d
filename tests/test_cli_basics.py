import subprocess
import sys


def test_help_lists_all_subcommands(cli):
    r = cli("--help")
    assert r.exit_code == 0
    for c in ("finetune", "certify", "attack", "partition", "compose", "report", "run"):
        assert c in r.output


def test_help_does_not_import_torch():
    code = "import sys; from robcli.cli import main; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version(cli):
    r = cli("--version")
    assert r.exit_code == 0 and "robcli" in r.output
