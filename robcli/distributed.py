"""Spreading one command over many processes, on the launchers this ecosystem uses: ``torchrun`` and SLURM.

robcli has no launcher of its own. A process finds out where it stands from its environment (:func:`detect`):

* ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` set by the agent), or
  ``srun`` (``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``/``SLURM_LOCALID`` inside a job step; the rendezvous
  address is the step's first node, the port ``MASTER_PORT`` or one derived from the job id): the ranks form a
  process group (gloo: the evaluation commands only exchange small control messages; ``finetune`` uses nccl
  on CUDA for its gradients);
* a SLURM job array (``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``) or ``--shard I/K``: independent
  processes with no process group, each taking its share of the chunk plan; ``robcli merge`` joins the parts.

``ROBCLI_DISTRIBUTED=0`` in the environment makes every process a single one (e.g. a helper process started by a
rank). Library code receives a :class:`World`; nothing here reads flags.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping

from robcli.errors import RobcliError, UsageError

LAUNCHERS = ("single", "torchrun", "srun", "array", "shard")
CONTROL_TIMEOUT_S = 600  # a collective that has not completed in 10 minutes means a lost rank
HEARTBEAT_S = 10.0  # how often every rank touches its heartbeat file
STALE_S = 180.0  # a rank whose heartbeat is this old (and that has not finished) is lost


@dataclass(frozen=True)
class World:
    """Where this process stands.

    Attributes:
        rank, size: this process's index among ``size`` processes of one job.
        local_rank: its index on this node (picks ``cuda:local_rank``).
        launcher: one of :data:`LAUNCHERS`.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launcher: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def grouped(self) -> bool:
        """Whether the processes form a process group (torchrun, srun) rather than running independently."""
        return self.size > 1 and self.launcher in ("torchrun", "srun")

    @property
    def label(self) -> str:
        return "single process" if self.size == 1 else f"rank {self.rank}/{self.size} ({self.launcher})"


def _int(env: Mapping[str, str], key: str) -> int | None:
    v = env.get(key)
    if v is None or str(v).strip() == "":
        return None
    try:
        return int(str(v).strip())
    except ValueError:
        raise UsageError(f"environment variable {key}={v!r} is not an integer") from None


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[03-05,9],gpu1`` -> ``node03``)."""
    s = nodelist.strip()
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", s)
    if not m:
        raise UsageError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, _, ranges = m.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def detect(environ: Mapping[str, str] | None = None, shard: tuple[int, int] | None = None) -> World:
    """The :class:`World` of this process, from its launcher's environment (or ``--shard I/K``).

    Raises:
        UsageError: contradictory settings (``--shard`` under torchrun/srun, a malformed environment).
    """
    env = os.environ if environ is None else environ
    if str(env.get("ROBCLI_DISTRIBUTED", "1")).strip() == "0":
        return World() if shard is None else World(shard[0], shard[1], 0, "shard")
    rank, size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    launched = None
    if rank is not None and size is not None and size > 1:
        launched = World(rank, size, _int(env, "LOCAL_RANK") or 0, "torchrun")
    elif env.get("SLURM_STEP_ID") is not None and (_int(env, "SLURM_STEP_NUM_TASKS") or 1) > 1:
        launched = World(_int(env, "SLURM_PROCID") or 0, _int(env, "SLURM_STEP_NUM_TASKS") or 1,
                         _int(env, "SLURM_LOCALID") or 0, "srun")
    if launched is not None:
        if shard is not None:
            raise UsageError(f"--shard {shard[0]}/{shard[1]} cannot be combined with {launched.launcher}: the "
                             "launcher already splits the work over its ranks")
        if not 0 <= launched.rank < launched.size:
            raise UsageError(f"{launched.launcher} gave rank {launched.rank} of {launched.size}")
        return launched
    if shard is not None:
        return World(shard[0], shard[1], 0, "shard")
    task, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is not None and count is not None and count > 1:
        lo = _int(env, "SLURM_ARRAY_TASK_MIN") or 0
        step = _int(env, "SLURM_ARRAY_TASK_STEP") or 1
        idx = (task - lo) // step
        if not 0 <= idx < count:
            raise UsageError(f"SLURM array task {task} is outside the array (min {lo}, step {step}, count {count})")
        return World(idx, count, 0, "array")
    return World()


def _rendezvous_env(world: World) -> None:
    """srun sets no MASTER_ADDR/PORT: the step's first node, and a port derived from the job id."""
    if world.launcher != "srun":
        return
    if "MASTER_ADDR" not in os.environ:
        nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        os.environ["MASTER_ADDR"] = first_host(nodes)
    if "MASTER_PORT" not in os.environ:
        job = int(os.environ.get("SLURM_JOB_ID", "0") or 0)
        os.environ["MASTER_PORT"] = str(20000 + job % 20000)
    os.environ.setdefault("RANK", str(world.rank))
    os.environ.setdefault("WORLD_SIZE", str(world.size))
    os.environ.setdefault("LOCAL_RANK", str(world.local_rank))


class Group:
    """The process group of a launched job (a no-op for single processes, job arrays and shards).

    Use as a context manager; :meth:`broadcast` / :meth:`gather` exchange picklable control messages over gloo.
    """

    def __init__(self, world: World, *, backend: str = "gloo", timeout_s: float = CONTROL_TIMEOUT_S):
        self.world = world
        self.backend = backend
        self.timeout_s = float(timeout_s)
        self._owns = False

    def __enter__(self) -> Group:
        if self.world.grouped:
            import torch.distributed as dist

            if not dist.is_available():  # pragma: no cover - torch builds without distributed
                raise UsageError("this torch build has no torch.distributed; run a single process")
            if not dist.is_initialized():
                _rendezvous_env(self.world)
                dist.init_process_group(self.backend, rank=self.world.rank, world_size=self.world.size,
                                        timeout=timedelta(seconds=self.timeout_s))
                self._owns = True
        return self

    def __exit__(self, *exc) -> bool:
        if self._owns:
            import torch.distributed as dist

            try:
                dist.destroy_process_group()
            except Exception:  # pragma: no cover - the group may already be broken after a failure
                pass
        return False

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        if not self.world.grouped:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        if not self.world.grouped:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world.grouped:
            import torch.distributed as dist

            dist.barrier()


def agree(group: Group, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on the main rank and hand its result (or its error) to every rank.

    A :class:`RobcliError` raised on the main rank is raised on every rank with the same message, so a bad input
    ends the whole job with one line and exit code 2 (not with a hung collective).
    """
    if not group.world.grouped:
        return fn()
    result: tuple[str, Any]
    if group.world.is_main:
        try:
            result = ("ok", fn())
        except RobcliError as e:
            result = ("error", (type(e).__name__, str(e)))
            group.broadcast(result)
            raise
    else:
        result = ("pending", None)
    result = group.broadcast(result)
    if result[0] == "error":
        import robcli.errors as errors

        cls = getattr(errors, result[1][0], RobcliError)
        raise cls(result[1][1])
    return result[1]


def together(group: Group, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on every rank and return its result there; if it raises a :class:`RobcliError` on any rank,
    the lowest such rank's error is raised on every rank (so no rank walks on into a collective the others
    never reach). Other exceptions propagate on their own rank only.
    """
    if not group.world.grouped:
        return fn()
    err: RobcliError | None = None
    try:
        result = fn()
        status: tuple[str, Any] = ("ok", None)
    except RobcliError as e:
        err, result = e, None
        status = ("error", (type(e).__name__, str(e)))
    failed = [s for s in group.gather(status) if s[0] == "error"]
    if not failed:
        return result
    if err is not None and failed[0][1] == (type(err).__name__, str(err)):
        raise err
    import robcli.errors as errors

    cls = getattr(errors, failed[0][1][0], RobcliError)
    raise cls(failed[0][1][1])


class Heartbeat:
    """Each rank touches ``DIR/alive-RANK`` every :data:`HEARTBEAT_S` seconds while it works, and writes
    ``DIR/done-RANK`` when its share is done, so the main rank can tell a slow rank from a lost one without a
    collective that times out after 30 minutes."""

    def __init__(self, folder: Path, world: World):
        self.folder = Path(folder)
        self.world = world
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _path(self, what: str, rank: int) -> Path:
        return self.folder / f"{what}-{rank}"

    def __enter__(self) -> Heartbeat:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._path("done", self.world.rank).unlink(missing_ok=True)
        self._touch()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _touch(self) -> None:
        p = self._path("alive", self.world.rank)
        p.write_text(str(os.getpid()))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._touch()
            except OSError:  # pragma: no cover - a vanished folder: the run is being cleaned up
                return

    def done(self) -> None:
        self._path("done", self.world.rank).write_text(str(time.time()))

    def lost(self, stale_s: float = STALE_S) -> list[int]:
        """Ranks that have not finished and whose heartbeat is older than ``stale_s`` seconds."""
        now = time.time()
        out = []
        for r in range(self.world.size):
            if self._path("done", r).exists():
                continue
            alive = self._path("alive", r)
            try:
                age = now - alive.stat().st_mtime
            except FileNotFoundError:
                age = float("inf")
            if age > stale_s:
                out.append(r)
        return out

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        return False


__all__ = ["Group", "Heartbeat", "LAUNCHERS", "World", "agree", "detect", "first_host", "together"]
