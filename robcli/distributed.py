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
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping

from robcli.errors import RobcliError, UsageError

LAUNCHERS = ("single", "torchrun", "srun", "array", "shard")
DISTRIBUTED_ENV = "ROBCLI_DISTRIBUTED"  # "0": this process runs alone, whatever launched it
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
    if str(env.get(DISTRIBUTED_ENV, "1")).strip() == "0":
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


_BASE_STORE = None  # the rendezvous store this process connected to (see Group._store)
_GROUPS_MADE = 0


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
                                        timeout=timedelta(seconds=self.timeout_s), store=self._store())
                self._owns = True
        return self

    def _store(self):
        """The rendezvous store, with keys of its own for each attempt of the job.

        Under torchrun the workers share the agent's store, which outlives a ``--max-restarts`` restart; the
        process group's keys of the failed attempt (e.g. a dead rank's address) would otherwise be read by the
        next one, so every attempt gets a prefix of its own.
        """
        import torch.distributed as dist

        global _BASE_STORE, _GROUPS_MADE
        if _BASE_STORE is None:  # one connection (rank 0 without torchrun's agent: one server) per process
            host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
            agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").strip().lower() == "true"
            _BASE_STORE = dist.TCPStore(host, port, self.world.size, is_master=(not agent and self.world.rank == 0),
                                        timeout=timedelta(seconds=CONTROL_TIMEOUT_S), wait_for_workers=False)
        # every group of the process gets keys of its own as well (robcli run opens one per step; all ranks
        # open them in the same order)
        _BASE_STORE.set_timeout(timedelta(seconds=self.timeout_s))  # this group's (e.g. a long solo step's)
        _GROUPS_MADE += 1
        return dist.PrefixStore(f"robcli/attempt-{restart_count()}/group-{_GROUPS_MADE}", _BASE_STORE)

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
        raise _echo(*result[1])
    return result[1]


def _echo(name: str, message: str) -> RobcliError:
    """Another rank's typed error, raised here too so that this rank stops as well. It is marked ``echo``: the
    rank where it happened prints the one line, the others exit with its code silently (one line per job, not
    one per rank)."""
    cls = _error_class(name)
    err = cls(message) if cls is not None else RobcliError(message)
    err.echo = True
    return err


def _error_class(name: str):
    """robcli's typed error class called ``name``, or None."""
    import robcli.errors as errors

    cls = getattr(errors, name, None)
    return cls if isinstance(cls, type) and issubclass(cls, RobcliError) else None


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
    raise _echo(*failed[0][1])


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

    def fail(self, error: BaseException) -> None:
        """Tell the main rank why this rank stopped (its typed error's name and one-line message)."""
        try:
            self._path("failed", self.world.rank).write_text(f"{type(error).__name__}\n{error}")
        except OSError:  # pragma: no cover - the folder is gone: the job is being torn down
            pass

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


def restart_count(environ: Mapping[str, str] | None = None) -> int:
    """How often the launcher restarted this job: torchrun's ``--max-restarts`` or a SLURM requeue."""
    env = os.environ if environ is None else environ
    return max(_int(env, "TORCHELASTIC_RESTART_COUNT") or 0, _int(env, "SLURM_RESTART_COUNT") or 0)


FAULT_ENV = "ROBCLI_TEST_FAULT"  # "RANK:CHUNKS": that rank exits hard after storing CHUNKS parts (tests only)


def _fault_hook(world: World) -> Callable[[], None] | None:
    """Fault injection for the tests: the named rank dies (``os._exit``) after its n-th part, first attempt only."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or restart_count() > 0:
        return None
    rank, _, n = spec.partition(":")
    if int(rank) != world.rank:
        return None
    left = [int(n or 1)]

    def hook() -> None:
        left[0] -= 1
        if left[0] <= 0:
            os._exit(17)

    return hook


class PartsLock:
    """An advisory lock on ``OUT.parts``: one run (all its ranks) at a time, or any number of shards/array tasks.

    A single process or the main rank of a launched job takes it exclusively; ``--shard`` processes and SLURM
    array tasks share it (they split the plan between them). A second run on the same ``--out`` (e.g. workers
    that outlived a killed launcher) is refused with one line instead of racing. The kernel drops the lock
    when its process dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, parts: Path, shared: bool = False):
        self.path = Path(parts).with_name(Path(parts).name + ".lock")
        self.shared = shared
        self._fd: int | None = None

    def __enter__(self) -> PartsLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks (Windows): run unlocked
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            who = "shards of it are" if not self.shared else "a run of it is"
            raise UsageError(f"another robcli process is writing {self.path.name[:-5]} ({who} running); wait for "
                             "it to end (or stop it) and rerun with --resume") from None
        self._fd = fd
        return self

    def release(self, remove: bool = False) -> None:
        if self._fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _wait_for_ranks(hb: Heartbeat, run, progress: Callable[[], None] | None, poll_s: float = 0.5) -> None:
    """The main rank waits until every rank has stored its share; a failed or lost rank ends the wait."""
    while True:
        failed = sorted(hb.folder.glob("failed-*"))
        if failed:
            name, _, msg = failed[0].read_text().partition("\n")
            rank = failed[0].name.split("-", 1)[1]
            if _error_class(name) is not None:
                raise _echo(name, msg)  # rank R printed it
            raise RobcliError(f"rank {rank} failed: {msg}; rerun the same command with --resume")
        if all((hb.folder / f"done-{r}").exists() for r in range(hb.world.size)):
            return
        lost = hb.lost()
        if lost:
            raise RobcliError(f"rank {lost[0]} stopped working (no heartbeat for {STALE_S:.0f} s); the finished "
                              "chunks are kept: rerun the same command with --resume")
        if progress is not None:
            progress()
        time.sleep(poll_s)


def run_table(out: str | Path, open_run: Callable[[bool, bool], Any], compute: Callable[[Any, list, Any], None], *,
              world: World | None = None, resume: bool = False, force: bool = False,
              progress: Callable[[int, int, str], None] | None = None, desc: str = "working",
              finish: Callable[[Any], Any] | None = None) -> tuple[Any, Any]:
    """Run the chunk plan of one table over every process of the job, and merge it once.

    Args:
        out: the final table.
        open_run: ``open_run(resume, force) -> TableRun`` (validates the configuration against existing parts).
        compute: ``compute(run, chunks, progress)`` computes the given chunks and stores each with ``run.write``.
        world: where this process stands (default :func:`detect`).
        resume, force: the user's flags. A launcher's restart (torchrun ``--max-restarts``, a SLURM requeue)
            resumes by itself: the parts are this job's own.
        progress: ``progress(done, total, desc)`` in chunks of the whole job, on the main rank only.
        finish: ``finish(run) -> DataFrame`` (default ``run.finish()``).

    A single process that fails leaves nothing it created behind: no parts when no chunk was stored, none at all
    after a :class:`~robcli.errors.NonFiniteOutput` (that run cannot be resumed), and no lock file.

    Every process takes its share of the pending chunks: a single process all of them; the ranks of a launched
    job (torchrun, srun) ``pending[rank::size]`` of the pending chunks the main rank planned and broadcast; a
    ``--shard I/K`` process or SLURM array task the chunks with ``id % K == I`` (no process group). A launched
    job's main rank waits for every rank (heartbeat files in ``OUT.parts/ranks``, so a lost rank ends the job
    within :data:`STALE_S` seconds), checks the parts and writes ``OUT``; shards and array tasks leave their
    parts for ``robcli merge`` (or the same command with ``--resume``).

    Returns:
        ``(DataFrame or None, run)``: the table on the process that wrote it (``None`` elsewhere).
    """
    from robcli.tables.run import parts_path

    world = world or detect()
    if restart_count() > 0:
        resume, force = True, False
    parts = parts_path(out)
    finish = finish or (lambda r: r.finish())
    if world.launcher in ("shard", "array"):
        if force:
            raise UsageError(f"--force does not apply to one {'shard' if world.launcher == 'shard' else 'array task'} "
                             "of a run (it would delete the other processes' parts)")
        with PartsLock(parts, shared=True):
            run = open_run(True, False)
            if run.complete:
                return run.table.df, run
            run.start()
            mine = [c for c in run.pending() if c.id % world.size == world.rank]
            _attach(run, world)
            compute(run, mine, progress)
            return None, run
    if not world.grouped:
        from robcli.errors import NonFiniteOutput

        existed = parts.exists()
        with PartsLock(parts) as lock:
            try:
                run = open_run(resume, force)
                if run.complete:
                    return run.table.df, run
                _attach(run, world)
                try:
                    compute(run, run.pending(), progress)
                except NonFiniteOutput:
                    if not existed:  # a model with NaN/inf logits: this run leaves nothing behind
                        shutil.rmtree(parts, ignore_errors=True)
                    raise
                except BaseException:
                    run.abandon()  # nothing stored yet: leave nothing behind
                    raise
                return finish(run), run
            finally:
                lock.release(remove=True)
    import contextlib

    with Group(world) as group, contextlib.ExitStack() as stack:
        run = lock = None

        def plan() -> dict:  # on the main rank only; agree() hands its result (or error) to every rank
            nonlocal run, lock
            lock = stack.enter_context(PartsLock(parts))
            run = open_run(resume, force)
            if not run.complete:
                run.start()
                shutil.rmtree(run.parts / "ranks", ignore_errors=True)  # heartbeats of an earlier attempt
            return {"complete": run.complete, "pending": [c.id for c in run.pending()]}

        info = agree(group, plan if world.is_main else (lambda: None))
        if not world.is_main and not info["complete"]:
            run = open_run(True, False)
        if info["complete"]:
            return (run.table.df if world.is_main else None), run
        pending = set(info["pending"])
        mine = [c for c in run.chunks if c.id in pending][world.rank::world.size]
        total = len(run.chunks)

        def report() -> None:
            if progress is not None and world.is_main:
                progress(len(run.stored()), total, desc)

        with Heartbeat(run.parts / "ranks", world) as hb:
            _attach(run, world, report)
            try:
                compute(run, mine, None)
            except BaseException as e:
                hb.fail(e)
                raise
            hb.done()
            if not world.is_main:
                return None, run
            _wait_for_ranks(hb, run, report)
        df = finish(run)
        lock.release(remove=True)
        return df, run


def _attach(run, world: World, report: Callable[[], None] | None = None) -> None:
    """After each stored part: the main rank's whole-job progress, and the tests' fault injection."""
    fault = _fault_hook(world)
    if report is None and fault is None:
        return

    def after(chunk) -> None:
        if report is not None:
            report()
        if fault is not None:
            fault()

    run.after_write = after


__all__ = ["Group", "Heartbeat", "LAUNCHERS", "PartsLock", "World", "agree", "detect", "first_host", "restart_count",
           "run_table", "together"]
