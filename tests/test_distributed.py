"""Where a process stands (robcli/distributed.py): torchrun, srun, SLURM job arrays, --shard."""

from __future__ import annotations

import pytest

from robcli.distributed import World, detect, first_host
from robcli.errors import UsageError


def test_single_process_by_default():
    assert detect({}) == World()
    assert detect({"RANK": "0", "WORLD_SIZE": "1"}) == World()


def test_torchrun():
    w = detect({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (w.rank, w.size, w.local_rank, w.launcher, w.grouped) == (3, 8, 1, "torchrun", True)
    with pytest.raises(UsageError, match="cannot be combined with torchrun"):
        detect({"RANK": "0", "WORLD_SIZE": "2"}, shard=(0, 2))


def test_srun_step_but_not_the_batch_script():
    step = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
            "SLURM_NTASKS": "8"}
    w = detect(step)
    assert (w.rank, w.size, w.local_rank, w.launcher) == (5, 8, 1, "srun")
    # the batch script itself (no job step): SLURM_NTASKS describes the allocation, not this process
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "7"}) == World()


def test_job_array_and_shard_have_no_group():
    w = detect({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10"})
    assert (w.rank, w.size, w.launcher, w.grouped) == (2, 4, "array", False)
    w = detect({"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
                "SLURM_ARRAY_TASK_STEP": "3"})
    assert (w.rank, w.size) == (2, 3)
    with pytest.raises(UsageError, match="outside the array"):
        detect({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3"})
    w = detect({}, shard=(1, 3))
    assert (w.rank, w.size, w.launcher, w.grouped) == (1, 3, "shard", False)
    assert detect({"ROBCLI_DISTRIBUTED": "0", "RANK": "1", "WORLD_SIZE": "2"}) == World()


def test_malformed_environment_is_one_line():
    with pytest.raises(UsageError, match="SLURM_PROCID"):
        detect({"SLURM_STEP_ID": "0", "SLURM_PROCID": "x", "SLURM_STEP_NUM_TASKS": "2"})


def test_first_host_of_slurm_nodelists():
    assert first_host("gnode[10,20,25,37]") == "gnode10"
    assert first_host("node[03-05,9],gpu1") == "node03"
    assert first_host("a1,b2") == "a1"
    assert first_host("single") == "single"
