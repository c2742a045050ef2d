"""attack and certify spread over processes (robcli/distributed.run_table): torchrun ranks, a restart after a
rank dies, SLURM array tasks, robcli merge, the parts lock. Tables must equal the single-process ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from robcli.tables.io import read_table
from robcli.tables.run import parts_path

CERT = ["certify", "--model", "tiny_cnn", "--dataset", "digits", "--n-ex", "9", "--N0", "10", "--N", "200",
        "--alpha", "0.01", "--seed", "3", "--chunk", "2", "--quiet"]
ATTACK = ["attack", "--model", "tiny_cnn", "--dataset", "digits", "--n-ex", "9", "--attack", "autoattack",
          "--version", "custom", "--aa-attacks", "apgd-ce", "--steps", "5", "--eps", "0.1", "--batch", "2", "--quiet"]

# a fixed-alpha mixture's certificates (h = tiny_cnn with weight 0.8): per-example noise (mix-smoothed-h) and
# per-chunk random starts (mix-local-estimate)
MIXCERT = ["certify", "--model", "tiny_cnn", "--mix", "0.8", "--dataset", "digits", "--n-ex", "9", "--chunk", "2",
           "--quiet"]
MIX_SMOOTHED = [*MIXCERT, "--method", "mix-smoothed-h", "--sigma", "0.25", "--N0", "10", "--N", "200", "--alpha", "0.01"]
MIX_LOCAL = [*MIXCERT, "--method", "mix-local-estimate", "--eps", "0.05", "--norm", "Linf", "--seed", "2"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd(), **extra)
    return env


def _torchrun(args, tmp_path, *launcher, **env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *launcher,
           "-m", "robcli", *map(str, args)]
    return subprocess.run(cmd, cwd=tmp_path, env=_env(**env), capture_output=True, text=True, timeout=240)


def _same(a, b):
    drop = [c for c in ("time",) if c in a.columns]
    pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop))


@pytest.mark.parametrize("args", [CERT, ATTACK, MIX_SMOOTHED, MIX_LOCAL],
                         ids=["certify", "autoattack", "mix-smoothed-h", "mix-local-estimate"])
def test_two_ranks_write_the_single_process_table(cli, tmp_path, args):
    one = tmp_path / "one.parquet"
    assert cli(*args, "--out", one).exit_code == 0
    two = tmp_path / "two.parquet"
    r = _torchrun([*args, "--out", two], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    _same(read_table(one).df, read_table(two).df)  # 9 examples in chunks of 2: 5 chunks, split 3/2
    assert not parts_path(two).exists() and not (tmp_path / "two.parquet.parts.lock").exists()


def test_a_rank_that_dies_is_restarted_and_the_table_is_complete(cli, tmp_path):
    one = tmp_path / "one.parquet"
    assert cli(*CERT, "--out", one).exit_code == 0
    out = tmp_path / "r.parquet"
    # rank 1 exits hard after its first part; torchrun restarts the job, which resumes by itself
    r = _torchrun([*CERT, "--out", out], tmp_path, "--max-restarts", "1", ROBCLI_TEST_FAULT="1:1")
    assert r.returncode == 0, r.stderr[-2000:]
    _same(read_table(one).df, read_table(out).df)
    # negative control: without a restart the job fails and leaves its parts (no table)
    out2 = tmp_path / "f.parquet"
    r = _torchrun([*CERT, "--out", out2], tmp_path, ROBCLI_TEST_FAULT="1:1")
    assert r.returncode != 0 and not out2.exists() and parts_path(out2).is_dir()
    assert cli(*CERT, "--out", out2, "--resume").exit_code == 0  # one process continues the parts
    _same(read_table(one).df, read_table(out2).df)


def test_array_tasks_then_merge_and_its_refusals(cli, tmp_path, monkeypatch):
    one = tmp_path / "one.parquet"
    assert cli(*CERT, "--out", one).exit_code == 0
    out = tmp_path / "a.parquet"
    for task in ("0", "1"):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
        r = cli(*CERT, "--out", out)
        assert r.exit_code == 0 and not out.exists()
    parts = parts_path(out)
    r = cli("merge", parts, "--out", out)  # task 2 has not run
    assert r.exit_code == 2 and "lacks 1 of 5 chunks" in r.output and not out.exists()
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert cli(*CERT, "--out", out).exit_code == 0
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    # a duplicated part (chunk 0's rows copied over chunk 1) and a part made with another configuration
    good = (parts / "chunk-000001.parquet").read_bytes()
    (parts / "chunk-000001.parquet").write_bytes((parts / "chunk-000000.parquet").read_bytes())
    r = cli("merge", parts, "--out", out)
    assert r.exit_code == 2 and "belongs to another chunk" in r.output and not out.exists()
    from robcli.tables.io import write_table

    t = read_table(parts / "chunk-000000.parquet")
    (parts / "chunk-000001.parquet").write_bytes(good)
    keep = (parts / "chunk-000002.parquet").read_bytes()
    t2 = read_table(parts / "chunk-000002.parquet")
    write_table(t2.df, parts / "chunk-000002.parquet", "certify", config={**t.config, "N": 300}, prov=t2.meta)
    r = cli("merge", parts, "--out", out)
    assert r.exit_code == 2 and "another configuration (N: 300 vs 200)" in r.output and not out.exists()
    (parts / "chunk-000002.parquet").write_bytes(keep)
    assert cli("merge", parts, "--out", out).exit_code == 0
    _same(read_table(one).df, read_table(out).df)
    assert cli("merge", tmp_path / "nope.parts", "--out", out).exit_code == 2


def test_a_second_run_on_the_same_out_is_refused_while_the_first_holds_the_lock(cli, tmp_path):
    from robcli.distributed import PartsLock

    out = tmp_path / "l.parquet"
    with PartsLock(parts_path(out)):
        r = cli(*CERT, "--out", out)
        assert r.exit_code == 2 and "another robcli process is writing" in r.output
    with PartsLock(parts_path(out), shared=True):  # shards share the lock with each other
        assert cli(*CERT, "--shard", "0/2", "--out", out).exit_code == 0
    assert cli(*CERT, "--shard", "1/2", "--out", out).exit_code == 0
    assert cli("merge", parts_path(out), "--out", out).exit_code == 0


@pytest.mark.parametrize("args", [MIX_SMOOTHED, MIX_LOCAL], ids=["mix-smoothed-h", "mix-local-estimate"])
def test_a_mixture_certificate_resumes_to_the_uninterrupted_table(cli, tmp_path, args):
    one = tmp_path / "one.parquet"
    assert cli(*args, "--out", one).exit_code == 0
    out = tmp_path / "r.parquet"
    r = cli(*args, "--out", out, "--shard", "1/2")  # chunks 1 and 3 of 5, as a killed run would leave them
    assert r.exit_code == 0 and not out.exists() and len(list(parts_path(out).glob("*.parquet"))) == 2
    assert cli(*args, "--out", out).exit_code == 2  # parts of an unfinished run: --resume or --force
    assert cli(*args, "--out", out, "--resume").exit_code == 0
    _same(read_table(one).df, read_table(out).df)
    # negative control: another seed of the local estimate is another table, and its parts are refused
    if "mix-local-estimate" in args:
        r = cli(*args, "--out", tmp_path / "s.parquet", "--shard", "0/2")
        assert r.exit_code == 0
        i = args.index("--seed") + 1
        r = cli(*args[:i], "5", *args[i + 1:], "--out", tmp_path / "s.parquet", "--resume")
        assert r.exit_code == 2 and "seed" in r.output


RECIPE = """
[recipe]
name = "spread"
out = "{root}"

[[step]]
name = "finetune"
command = "finetune"
args = { loss = "std", dataset = "gaussians", model = "tiny_mlp", epochs = 1, batch = 50, quiet = true, out = "{out}/std" }

[[step]]
name = "certify"
command = "certify"
args = { model = "tiny_cnn", dataset = "digits", n_ex = 9, N0 = 10, N = 200, alpha = 0.01, seed = 3, chunk = 2, quiet = true, out = "{out}/cert.parquet" }

[[step]]
name = "attack"
command = "attack"
args = { model = "tiny_cnn", dataset = "digits", n_ex = 9, attack = "apgd-ce", steps = 5, eps = "0.1", batch = 2, quiet = true, out = "{out}/att.parquet" }

[[step]]
name = "partition"
command = "partition"
positional = ["{out}/att.parquet"]
args = { eps = "0.1", quiet = true, out = "{out}/part.parquet" }

[[step]]
name = "report"
command = "report"
positional = ["{out}/cert.parquet", "{out}/att.parquet"]
args = { format = "markdown", out = "{out}/report.md" }
"""


def test_a_recipe_runs_under_torchrun_with_each_step_spread_or_on_rank_0(cli, tmp_path, monkeypatch):
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "r.toml").write_text(RECIPE.replace("{root}", str(tmp_path / name / "out")))
    r = cli("run", tmp_path / "one" / "r.toml")
    assert r.exit_code == 0, r.output
    r = _torchrun(["run", tmp_path / "two" / "r.toml"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for t in ("cert.parquet", "att.parquet", "part.parquet"):
        _same(read_table(tmp_path / "one" / "out" / t).df, read_table(tmp_path / "two" / "out" / t).df)
    reports = [(tmp_path / n / "out" / "report.md").read_text().replace(str(tmp_path / n), "") for n in ("one", "two")]
    assert reports[0] == reports[1] and "robcli report" in reports[0]
    logs = [pd.read_parquet(tmp_path / n / "out" / "std" / "train_log.parquet") for n in ("one", "two")]
    assert list(logs[0].columns) == list(logs[1].columns) and len(logs[1]) == 1  # trained with DDP on 2 ranks
    assert abs(float(logs[0]["loss"].iloc[0]) - float(logs[1]["loss"].iloc[0])) < 1e-5
    import json

    cards = [json.loads((tmp_path / n / "out" / "std" / "card.json").read_text()) for n in ("one", "two")]
    assert [c["training"]["world_size"] for c in cards] == [1, 2]
    assert r.stderr.count("▶ certify") == 1  # rank 0 talks
    # the second launch finds every step up to date (decided by rank 0, stamps written by it)
    r = _torchrun(["run", tmp_path / "two" / "r.toml"], tmp_path)
    assert r.returncode == 0 and r.stderr.count("up to date, skipped") == 5, r.stderr[-3000:]
    r = _torchrun(["run", tmp_path / "two" / "r.toml", "--dry-run"], tmp_path)  # rank 0 answers, nothing runs
    assert r.returncode == 0 and r.stdout.count("[up to date]") == 5, r.stdout + r.stderr[-2000:]
    # a job array cannot run a recipe (its tasks leave parts, not tables)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    r = cli("run", tmp_path / "one" / "r.toml")
    assert r.exit_code == 2 and "job array" in r.output


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc: torchrun starts its workers in sessions of their own)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_sigkill_of_a_launched_job_then_resume_gives_the_same_table(cli, tmp_path):
    import signal
    import time

    args = [*CERT[:CERT.index("--N")], "--N", "20000", *CERT[CERT.index("--N") + 2:]]
    args[args.index("--n-ex") + 1] = "24"  # 12 chunks of 2
    one = tmp_path / "one.parquet"
    assert cli(*args, "--out", one).exit_code == 0

    def launch_and_wait_for_parts(out):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "robcli",
               *map(str, args), "--out", str(out)]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(parts_path(out).glob("chunk-*.parquet"))) < 2:
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.02)
        return proc

    # 1. kill -9 of the launcher's process group: torchrun's workers live in sessions of their own and outlive
    # it; the parts lock refuses a second run on the same --out while they write
    out = tmp_path / "orphans.parquet"
    proc = launch_and_wait_for_parts(out)
    workers = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert len(workers) >= 2 and any(_alive(w) for w in workers)  # 10 chunks of work left: they still run
    r = cli(*args, "--out", out, "--resume")
    assert r.exit_code == 2 and "another robcli process is writing orphans.parquet" in r.output, r.output
    deadline = time.monotonic() + 180
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not out.exists():  # the orphans did not finish (they may stop when the launcher's store goes)
        assert cli(*args, "--out", out, "--resume").exit_code == 0
    _same(read_table(one).df, read_table(out).df)

    # 2. the whole job killed (launcher and workers): the parts stay, the lock goes with the processes
    out = tmp_path / "k.parquet"
    proc = launch_and_wait_for_parts(out)
    victims = [proc.pid, *_descendants(proc.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    done = len(list(parts_path(out).glob("chunk-*.parquet")))
    assert not out.exists() and 2 <= done < 12, done  # killed in the middle: some parts, no table
    r = _torchrun([*args, "--out", out], tmp_path)  # without --resume: refused, nothing lost
    assert r.returncode != 0 and "--resume" in r.stderr
    assert len(list(parts_path(out).glob("chunk-*.parquet"))) == done
    r = _torchrun([*args, "--out", out, "--resume"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    _same(read_table(one).df, read_table(out).df)
