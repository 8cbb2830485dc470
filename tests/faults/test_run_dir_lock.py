"""One job per run dir (issue 13, item 1): a second job on a run dir in use is refused at once (exit 2,
the holder named); a holder that died is taken over, saying so; the job's own restarts are allowed.

Real processes through the CLI. On this host the holder's PID decides; `test_lock_across_hosts` runs
the holder in a UTS + PID namespace of its own (another hostname, PIDs this host cannot check), as a
job on another node of a shared filesystem, where only its heartbeat tells whether it lives.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.faults import procs

pytestmark = pytest.mark.slow


def train_argv(run: Path, cache: Path, *extra: str) -> list[str]:
    # A long run (0.05 s per micro-batch, 2000 steps): it is still running whenever a second job looks.
    return procs.python_m("trainer.train", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={cache}",
                          "trainer.max_steps=2000", "checkpoint.every_n_steps=4", "trainer.val_every_steps=1000",
                          "logger.wandb=false", "+data.batch_delay_s=0.05", *extra)


def lock_holder(run: Path) -> dict:
    try:
        return json.loads((run / "lock.json").read_text())
    except (OSError, ValueError):
        return {}


def refused(job: procs.Job, timeout_s: float = 180) -> tuple[float, str]:
    """(seconds from the job's start to its exit, its output); the job must end with exit 2."""
    code = job.wait(timeout_s)
    took = time.monotonic() - job.started
    assert code == 2, job.tail()
    return took, job.output()


def test_second_job_refused_1s_and_20s_apart_then_a_dead_holder_is_taken_over(tmp_path, shared_cache):
    run = tmp_path / "run"
    with procs.jobs() as started:
        first = procs.Job(train_argv(run, shared_cache), tmp_path / "first.log", timeout_s=400)
        started.append(first)
        time.sleep(1)
        second = procs.Job(train_argv(run, shared_cache), tmp_path / "second.log", timeout_s=400)
        started.append(second)
        # Started 1 s apart, either may win the lock; the other is refused, naming the winner.
        winner = procs.wait_for("a lock holder", lambda: lock_holder(run).get("pid"), 180)
        holder, loser = (first, second) if winner == first.pid else (second, first)
        assert winner == holder.pid
        took_1s, out = refused(loser)
        assert re.search(rf"error: run dir {re.escape(str(run))} is in use by another job \(host \S+, PID {holder.pid}, "
                         r"no job id, since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d; it is running\)", out), out[-2000:]
        assert "Traceback" not in out and out.count("error:") == 1

        # 20 s after the holder started, it is training: the third is refused just the same.
        time.sleep(max(0.0, 20 - (time.monotonic() - holder.started)))
        config_before = (run / "config.yaml").read_text()
        third = procs.Job(train_argv(run, shared_cache, "optim.lr=0.01"), tmp_path / "third.log", timeout_s=400)
        started.append(third)
        took_20s, out = refused(third)
        assert f"PID {holder.pid}" in out and "Traceback" not in out
        assert (run / "config.yaml").read_text() == config_before  # its different config was not written
        procs.wait_for("a checkpoint of the holder", lambda: procs.checkpoint_steps(run), 240, job=holder)
        print(f"second job refused {took_1s:.1f} s after its start (started 1 s apart), "
              f"{took_20s:.1f} s after its start (started 20 s apart)")

        # Nothing was written twice while the others were refused: one CSV row per step, no set-aside checkpoints.
        steps = procs.logged_steps(run)
        assert steps == list(range(len(steps))), steps
        assert not list((run / "checkpoints").glob("*.replaced-*"))

        # The holder dies without releasing its lock (kill -9): the next job takes it over, saying so, and resumes.
        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait() == -signal.SIGKILL
        assert lock_holder(run).get("pid") == holder.pid  # left behind
        last = max(procs.checkpoint_steps(run))
        resumed = procs.Job(train_argv(run, shared_cache, f"run.stop_after_steps={last + 2}"), tmp_path / "resumed.log",
                            timeout_s=400)
        started.append(resumed)
        assert resumed.wait() == 0, resumed.tail()
    out = resumed.output()
    assert re.search(rf"run-dir lock {re.escape(str(run / 'lock.json'))}: taking it over from host \S+, PID {holder.pid}, "
                     rf"no job id, since [\d\-: ]+: PID {holder.pid} is no longer running", out), out[-3000:]
    assert f"resuming from step {last}" in out
    assert lock_holder(run) == {}  # released at exit


def _on_other_host(argv: list[str], hostname: str) -> list[str]:
    """The command in a new UTS namespace (its own hostname) and PID namespace (its PID is not ours to check)."""
    return ["unshare", "--uts", "--pid", "--fork", "--kill-child", "sh", "-c", f'hostname {hostname} && exec "$@"',
            "sh", *argv]


@pytest.mark.root
def test_lock_across_hosts_heartbeat_and_same_job_restart(tmp_path, shared_cache):
    if os.geteuid() != 0:
        pytest.skip("needs root (UTS and PID namespaces stand for another host)")
    probe = subprocess.run(_on_other_host(["true"], "probe"), capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create namespaces here: {probe.stderr.strip()}")
    run = tmp_path / "run"
    stale = "run.lock_stale_after_s=6"  # the holder heartbeats every 6/8 s
    with procs.jobs() as started:
        # 1. A holder on another host, alive: refused on its heartbeat (its PID means nothing here).
        remote = procs.Job(_on_other_host(train_argv(run, shared_cache, stale), "node-b"), tmp_path / "remote.log",
                           timeout_s=400)
        started.append(remote)
        procs.wait_for("the remote holder", lambda: lock_holder(run).get("host") == "node-b", 180, job=remote)
        here = procs.Job(train_argv(run, shared_cache, stale), tmp_path / "here.log", timeout_s=400)
        started.append(here)
        _, out = refused(here)
        assert re.search(r"in use by another job \(host node-b, PID \d+, no job id, since [\d\-: ]+; "
                         r"its last heartbeat was \d+ s ago\)", out), out[-2000:]

        # 2. It dies: once its heartbeat is older than run.lock_stale_after_s, the lock is taken over.
        remote.kill()
        procs.wait_for("a stale heartbeat", lambda: time.time() - (run / "lock.json").stat().st_mtime > 6.5, 30)
        takeover = procs.Job(train_argv(run, shared_cache, stale, "run.stop_after_steps=1"), tmp_path / "takeover.log",
                             timeout_s=400)
        started.append(takeover)
        assert takeover.wait() == 0, takeover.tail()
        assert re.search(r"taking it over from host node-b, PID \d+, no job id, since [\d\-: ]+: "
                         r"no heartbeat for \d+ s \(run.lock_stale_after_s=6\)", takeover.output()), takeover.tail()

        # 3. The same job (a SLURM requeue: same job id) lands here while the dead holder's heartbeat is fresh:
        # it continues at once, even with a heartbeat timeout far away.
        job = {"SLURM_JOB_ID": "4242"}
        remote = procs.Job(_on_other_host(train_argv(run, shared_cache), "node-c"), tmp_path / "remote2.log",
                           env_vars=procs.env(**job), timeout_s=400)
        started.append(remote)
        procs.wait_for("the second remote holder", lambda: lock_holder(run).get("host") == "node-c", 180, job=remote)
        remote.kill()
        requeued = procs.Job(train_argv(run, shared_cache, "run.lock_stale_after_s=600", "run.stop_after_steps=2"),
                             tmp_path / "requeued.log", env_vars=procs.env(**job), timeout_s=400)
        started.append(requeued)
        assert requeued.wait() == 0, requeued.tail()
    out = requeued.output()
    assert re.search(r"taking it over from host node-c, PID \d+, job id slurm-4242, since [\d\-: ]+: "
                     r"it is an earlier process of this job \(slurm-4242: a restart or requeue\)", out), out[-3000:]


def stopped_at(out: str, run: Path, new_holder: int, job_id: str) -> int:
    """The step at which a job that lost its lock stopped, from its one error line (which names the new holder)."""
    m = re.search(rf"error: run dir {re.escape(str(run))} was taken over by another job \(host \S+, PID {new_holder}, "
                  rf"job id {job_id}, since [\d\-: ]+\) while this job ran: this job stopped at step (\d+) without saving",
                  out)
    assert m, out[-3000:]
    assert "Traceback" not in out and out.count("error:") == 1, out[-3000:]
    return int(m.group(1))


def test_a_holder_whose_lock_is_taken_over_stops_at_its_next_step_without_saving(tmp_path, shared_cache):
    """A requeue of the same SLURM job id starts while the earlier process still runs (a node the scheduler
    gave up on): the requeue takes the lock, and the earlier process stops instead of writing on."""
    run = tmp_path / "run"
    job = procs.env(SLURM_JOB_ID="4243")
    argv = train_argv(run, shared_cache, "run.lock_stale_after_s=4",  # heartbeat and look every 0.5 s
                      "checkpoint.every_n_steps=1")  # every step is saved: a save after the takeover would show
    with procs.jobs() as started:
        first = procs.Job(argv, tmp_path / "first.log", env_vars=job, timeout_s=400)
        started.append(first)
        procs.wait_for("a checkpoint of the first job", lambda: procs.checkpoint_steps(run), 240, job=first)
        second = procs.Job(argv, tmp_path / "second.log", env_vars=job, timeout_s=400)
        started.append(second)
        procs.wait_for("the second job holding the lock", lambda: lock_holder(run).get("pid") == second.pid, 240,
                       job=second, poll_s=0.01)
        taken = time.monotonic()
        # Held still until the first is gone, so that every checkpoint on disk then is the first job's.
        os.killpg(second.pid, signal.SIGSTOP)
        procs.wait_for("the first job gone", lambda: first.proc.poll() is not None, 60)
        stop_s = time.monotonic() - taken
        saved = procs.checkpoint_steps(run)
        os.killpg(second.pid, signal.SIGCONT)
        assert first.wait() == 2, first.tail()
        step = stopped_at(first.output(), run, second.pid, "slurm-4243")
        assert max(saved) == step - 1  # saved up to the step before; not the step it stopped at
        procs.wait_for("the second job resuming", lambda: f"resuming from step {step - 1}" in second.output(), 240,
                       job=second)
    assert re.search(rf"taking it over from host \S+, PID {first.pid}, job id slurm-4243, since [\d\-: ]+: "
                     r"it is an earlier process of this job \(slurm-4243: a restart or requeue\)", second.output())
    print(f"lock taken over -> the earlier job stopped at step {step} and exited 2, {stop_s:.1f} s later")


def test_self_launched_ranks_stop_together_when_their_launchers_lock_is_taken_over(tmp_path, shared_cache):
    """Two ranks under `trainer.devices=2`: the launcher holds the lock, rank 0 watches it; once it is taken (here
    by this test process, through the same `acquire` a requeue of the same job id runs), both ranks stop at the
    same step without saving and the job exits 2, without a restart."""
    from trainer.tracking.run_lock import acquire

    run = tmp_path / "run"
    argv = train_argv(run, shared_cache, "trainer.devices=2", "strategy=ddp", "run.lock_stale_after_s=4",
                      "checkpoint.every_n_steps=1")
    lock = None
    try:
        with procs.jobs() as started:
            job = procs.Job(argv, tmp_path / "job.log", env_vars=procs.env(SLURM_JOB_ID="4244"), timeout_s=400)
            started.append(job)
            procs.wait_for("a checkpoint", lambda: procs.checkpoint_steps(run), 300, job=job)
            lock = acquire(run / "lock.json", job_id="slurm-4244", stale_after_s=600)
            taken = time.monotonic()
            procs.wait_for("the job gone", lambda: job.proc.poll() is not None, 60)
            stop_s = time.monotonic() - taken
            saved = procs.checkpoint_steps(run)
            assert job.wait() == 2, job.tail()
    finally:
        if lock is not None:
            lock.release()
    out = job.output()
    step = stopped_at(out, run, os.getpid(), "slurm-4244")
    assert max(saved) == step - 1
    assert "restarting the ranks" not in out
    print(f"lock taken over -> both ranks stopped at step {step}, the job exited 2 {stop_s:.1f} s later")
