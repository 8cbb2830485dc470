"""One job per run directory: a lock file that names its holder, taken before anything is written.

Two jobs writing one run dir interleave their checkpoints, CSV rows and W&B steps (seen: both
crashed 27 s in when started 1 s apart; started 20 s apart, the second resumed from the first's
checkpoints while it still ran). So the first process of a job (rank 0, or the launcher of local
ranks) takes `<run_dir>/lock.json` and keeps it until it exits; a second job is refused at once.

Who may take a lock that is held:
- the same job (the same launcher job id: a SLURM requeue, a torchrun restart, a PyTorchJob pod
  restarted) - it continues its own run;
- anyone, when the holder is dead: on the same host (same boot, same PID namespace) its PID is
  checked; elsewhere (another node on a shared filesystem, another container) the holder's
  heartbeat (the file's mtime, touched every `stale_after_s / 8`) must be older than `stale_after_s`.

The file is never renamed or deleted (an empty one is free): every read and write of it happens
under an flock on it, so two jobs deciding at the same moment cannot both win.

A holder can lose its lock while it runs: its heartbeat stalled longer than `stale_after_s` (an NFS
hang, a suspended job), or a requeue of the same job id started while it still ran. Then two jobs
would write the run dir again, so the job that lost it stops at its next step boundary, without
saving, exit 2, naming the new holder: training's rank 0 watches the lock (`watch`) and every rank
agrees on stopping with the preemption check (distributed/preemption.py).
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from trainer.errors import UserError

log = logging.getLogger("trainer")


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    job_id: str | None  # the launcher's job id; None for a plain process
    since: float  # when the lock was taken (epoch seconds)
    token: str  # unique per acquisition
    boot_id: str | None = None  # with pid_ns: "the same host" for a PID check
    pid_ns: str | None = None
    start_ticks: int | None = None  # the PID's start time, so a reused PID is not mistaken for the holder

    def describe(self) -> str:
        job = f"job id {self.job_id}" if self.job_id else "no job id"
        return f"host {self.host}, PID {self.pid}, {job}, since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}"


def this_process(job_id: str | None) -> Holder:
    pid = os.getpid()
    return Holder(host=socket.gethostname(), pid=pid, job_id=job_id, since=time.time(), token=secrets.token_hex(8),
                  boot_id=_read("/proc/sys/kernel/random/boot_id"), pid_ns=_pid_namespace(), start_ticks=_start_ticks(pid))


# The ranks a lock holder starts itself (trainer/distributed/spawn.py) watch its lock by this token.
TOKEN_ENV = "TRAINER_RUN_LOCK_TOKEN"
_HELD: dict[Path, "RunLock"] = {}  # the locks this process holds, by path


def heartbeat_s(stale_after_s: float) -> float:
    """How often a holder touches its lock, and its ranks look at it: well inside `stale_after_s`."""
    return max(0.5, stale_after_s / 8)


class LockWatch:
    """Looks at a lock this job holds (by its token) every `every_s` in a daemon thread: `taken_by` is None
    while the job holds it, then whoever took it. The holder's own watch also heartbeats (`touch`)."""

    def __init__(self, path: Path, token: str, every_s: float, *, touch: bool = False):
        self.path, self.token, self.touch = path, token, touch
        self.taken_by: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(every_s,), name="run-dir-lock", daemon=True)
        self._thread.start()

    def _watch(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                with _locked(self.path) as fd:
                    current = _parse(_read_fd(fd))
                    if current is None or current.token != self.token:
                        self.taken_by = f"another job ({current.describe()})" if current else \
                            "nobody: its lock file was emptied or deleted"
                        log.warning("run dir %s was taken over by %s; this job stops at its next training step",
                                    self.path.parent, self.taken_by)
                        return
                    if self.touch:
                        os.utime(self.path)
            except OSError as e:  # a heartbeat missed is not worth ending training for
                log.warning("run-dir lock %s: heartbeat failed (%s)", self.path, e)

    def lost(self, step: int) -> str | None:
        """None while this job holds the lock; else the error that ends it at training step `step`."""
        if self.taken_by is None:
            return None
        return (f"run dir {self.path.parent} was taken over by {self.taken_by} while this job ran: this job stopped "
                f"at step {step} without saving, so that only one job writes the run dir. A lock is taken over when "
                f"its holder's heartbeat is older than run.lock_stale_after_s (a holder on another host that stalled, "
                f"e.g. on a hung filesystem or suspended: raise it), or by a requeue of the same job id (only one "
                f"of them should run).")


class RunLock(LockWatch):
    """A held lock: heartbeats in a daemon thread until `release()` (also called at exit)."""

    def __init__(self, path: Path, holder: Holder, heartbeat_s: float):
        self.holder = holder
        super().__init__(path, holder.token, heartbeat_s, touch=True)
        _HELD[path] = self
        atexit.register(self.release)

    def release(self) -> None:
        if self._stop.is_set() or os.getpid() != self.holder.pid:  # a forked child does not own it
            return
        self._stop.set()
        _HELD.pop(self.path, None)
        with contextlib.suppress(OSError), _locked(self.path) as fd:
            current = _parse(_read_fd(fd))
            if current is not None and current.token == self.holder.token:
                os.ftruncate(fd, 0)


def watch(path: Path, stale_after_s: float) -> LockWatch | None:
    """For training's rank 0: the watch on this job's lock of `path`, held by this process (a plain run,
    rank 0 under an external launcher) or by the launcher that started this rank (`TOKEN_ENV`); None
    when this job holds no lock there."""
    path = Path(path).absolute()
    if path in _HELD:
        return _HELD[path]
    token = os.environ.get(TOKEN_ENV)
    return LockWatch(path, token, heartbeat_s(stale_after_s)) if token else None


def acquire(path: Path, *, job_id: str | None, stale_after_s: float) -> RunLock:
    """Take the run-dir lock at `path` or raise UserError naming its living holder."""
    me = this_process(job_id)
    with _locked(path) as fd:
        taking_over = _refuse_if_held(path, fd, me, stale_after_s)
        if taking_over:
            log.warning("run-dir lock %s: taking it over from %s", path, taking_over)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(asdict(me), indent=1) + "\n").encode(), 0)
    return RunLock(Path(path).absolute(), me, heartbeat_s=heartbeat_s(stale_after_s))


def check(path: Path, *, job_id: str | None, stale_after_s: float) -> None:
    """Raise UserError if another living job holds `path` (takes nothing): lets an entry point refuse a
    second job before its slow imports; `acquire` decides for good."""
    if path.is_file():
        with _locked(path) as fd:
            _refuse_if_held(path, fd, this_process(job_id), stale_after_s)


def _refuse_if_held(path: Path, fd: int, me: Holder, stale_after_s: float) -> str:
    """Raise UserError naming a living holder; else '' (free) or what is being taken over, and why."""
    holder = _parse(_read_fd(fd))
    if holder is None:
        return ""
    alive, why = _judge(holder, me, time.time() - os.fstat(fd).st_mtime, stale_after_s)
    if alive:
        raise UserError(_refusal(path, holder, why))
    return f"{holder.describe()}: {why}" if why else ""


def _judge(holder: Holder, me: Holder, age_s: float, stale_after_s: float) -> tuple[bool, str]:
    """(alive, why): whether `holder` still holds the lock against `me`, and a reason for the log."""
    if holder.token == me.token or (holder.host, holder.pid, holder.start_ticks) == (me.host, me.pid, me.start_ticks):
        return False, ""  # this very process, again
    if me.job_id and holder.job_id == me.job_id:
        return False, f"it is an earlier process of this job ({me.job_id}: a restart or requeue)"
    same_host = (holder.host, holder.boot_id, holder.pid_ns) == (me.host, me.boot_id, me.pid_ns) and me.pid_ns is not None
    if same_host:
        if _running(holder.pid, holder.start_ticks):
            return True, "it is running"
        return False, f"PID {holder.pid} is no longer running"
    if age_s < stale_after_s:
        return True, f"its last heartbeat was {age_s:.0f} s ago"
    return False, f"no heartbeat for {age_s:.0f} s (run.lock_stale_after_s={stale_after_s:g})"


def _refusal(path: Path, holder: Holder, why: str) -> str:
    elsewhere = "" if why == "it is running" else (
        " A holder on another host whose heartbeat stops is taken over after run.lock_stale_after_s.")
    return (f"run dir {path.parent} is in use by another job ({holder.describe()}; {why}). "
            f"Wait for it to end, or give this run another run.id or run.dir.{elsewhere} "
            f"If that job is gone for good, delete {path}.")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """The lock file, open and flock'ed (exclusive) for a read-decide-write."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # e.g. Lustre mounted without -o flock: decide without the mutex
            if e.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
                raise
        yield fd
    finally:
        os.close(fd)  # closing drops the flock


def _read_fd(fd: int) -> str:
    return os.pread(fd, 1 << 16, 0).decode("utf-8", errors="replace")


def _parse(text: str) -> Holder | None:
    """The holder a lock file names, or None when it is free (empty, or a half-written leftover)."""
    try:
        data = json.loads(text)
        return Holder(**{k: data.get(k) for k in Holder.__dataclass_fields__})
    except (ValueError, TypeError, AttributeError):
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # field 22 (starttime), counted after the parenthesised command name, which may hold spaces
    return int(stat.rsplit(")", 1)[1].split()[19])


def _running(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return True  # no /proc to ask: the PID exists
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False  # a zombie: dead, not yet reaped by its parent
    return start_ticks is None or int(fields[19]) == start_ticks
