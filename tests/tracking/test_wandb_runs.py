"""W&B through the real command line: it never ends training, and a run keeps one step axis.

- W&B that cannot start online (a malformed key; a valid-looking key and a server that refuses
  connections) falls back to offline with one warning naming the cause, and the run's rows land
  in the offline run for `wandb sync`. W&B's own service dying mid-run: the same, from there on.
- WANDB_MODE=offline is honoured with a key configured; after kill -9 and a resume, the offline
  files of the two sessions hold every step exactly once on one axis (`_step` = the global step),
  with the values the CSV log has, including every row up to the checkpoint the resume starts from.
"""
from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.faults import procs
from tests.faults.wandb_file import history, records

pytestmark = pytest.mark.slow
KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B key, valid for no server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def wandb_env(**extra: str) -> dict[str, str]:
    env = procs.env(WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}", **extra)
    if "WANDB_MODE" not in extra:
        env.pop("WANDB_MODE")
    return env


def offline_files(run: Path) -> list[Path]:
    return sorted(run.glob("wandb/offline-run-*/run-*.wandb"))


def rows_by_step(path: Path) -> dict[int, dict]:
    return {row["_step"]: row for row in history(path)}


def csv_losses(run: Path) -> dict[int, float]:
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def warnings(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("W&B ") and not line.startswith("W&B ran offline")]


def folder_time(path: Path) -> datetime:
    """W&B names a run's folder after the time its start began: <mode>-run-YYYYmmdd_HHMMSS-<id>."""
    return datetime.strptime(re.search(r"(\d{8}_\d{6})", path.name).group(1), "%Y%m%d_%H%M%S")


def loss_steps(path: Path) -> list[int]:
    return [s for s, r in sorted(rows_by_step(path).items()) if "train/loss" in r]


def written_loss_steps(run: Path) -> list[int]:
    """The train/loss steps W&B's service has written to the run's (one) offline file so far."""
    try:
        (path,) = offline_files(run)
        return loss_steps(path)
    except Exception:  # noqa: BLE001 - not there yet, or a record half-written at the file's end
        return []


def test_a_malformed_key_then_a_dead_wandb_service_never_stop_training(tmp_path, shared_cache):
    run = tmp_path / "run"
    argv = procs.python_m("trainer.train", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={shared_cache}",
                          "trainer.max_steps=14", "checkpoint.every_n_steps=100", "trainer.val_every_steps=100",
                          "+data.batch_delay_s=0.15")
    with procs.jobs() as started:
        job = procs.Job(argv, tmp_path / "train.log", env_vars=wandb_env(WANDB_API_KEY="not-a-key"))
        started.append(job)
        # W&B's service writes its file every flush_interval_s, at its own pace (it lagged a few seconds behind
        # training at load ~3): wait until it has written rows, so the kill comes while it demonstrably works.
        written = procs.wait_for("4 rows in W&B's run file", lambda: written_loss_steps(run)[3:] and written_loss_steps(run),
                                 240, job=job)
        service = [p for p in job.descendants() if "wandb-core" in " ".join(p.cmdline())]
        assert service, "no W&B service process found"
        for p in service:
            p.kill()  # W&B's own service dies mid-run: the next log fails
        at_kill = max(procs.logged_steps(run))
        assert job.wait() == 0, job.tail()
    out = job.output()
    said = warnings(out)
    assert len(said) == 2, said
    assert "could not start online" in said[0] and "AuthenticationError" in said[0] and "offline" in said[0], said
    assert "logging failed" in said[1] and "offline" in said[1], said
    assert "Traceback" not in out, job.tail()
    wandb_id = (run / "wandb_id.txt").read_text().strip()
    first, second = offline_files(run)
    assert {p.parent.name.rsplit("-", 1)[-1] for p in (first, second)} == {wandb_id}
    before, after = loss_steps(first), loss_steps(second)
    # What the service had written stays; the second offline run continues the one step axis to the end. The
    # rows in between were in the dead service's hands (sent, not yet written): lost, and only those.
    assert before[: len(written)] == written and before == list(range(before[-1] + 1)), (written, before)
    assert after == list(range(after[0], 14)) and before[-1] < after[0], (before, after)
    print(f"dead W&B service: rows {before[-1] + 1}..{after[0] - 1} lost; training was at step {at_kill} at the kill")


def test_an_unreachable_server_times_out_into_offline(tmp_path, shared_cache):
    run = tmp_path / "run"
    proc = subprocess.run(procs.python_m("trainer.train", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={shared_cache}",
                                         "trainer.max_steps=4", "logger.wandb.init_timeout_s=5"),
                          cwd=procs.ROOT, env=wandb_env(WANDB_API_KEY=KEY), capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    said = warnings(out)
    assert len(said) == 1 and "could not start online" in said[0] and "127.0.0.1" in said[0], said
    online = sorted(run.glob("wandb/run-*"))
    (offline,) = offline_files(run)
    waited = (folder_time(offline.parent) - folder_time(online[0])).total_seconds()
    print(f"online start attempt -> offline run: {waited:.0f} s (init_timeout_s=5)")
    assert waited <= 5 + 15, waited  # bounded by the init timeout, not W&B's 90 s default
    assert [s for s, r in sorted(rows_by_step(offline).items()) if "train/loss" in r] == [0, 1, 2, 3]


def test_kill9_then_resume_keeps_one_step_axis_with_every_row(tmp_path, shared_cache):
    run = tmp_path / ("a-run-dir-with-a-long-name-" + "x" * 60)  # the summary prints it whole (no "…")
    env = wandb_env(WANDB_API_KEY=KEY, WANDB_MODE="offline", COLUMNS="60")  # a key, but WANDB_MODE says offline
    argv = procs.python_m("trainer.train", *procs.TINY, f"run.dir={run}", f"paths.cache_dir={shared_cache}",
                          "trainer.max_steps=12", "checkpoint.every_n_steps=4", "trainer.val_every_steps=4",
                          "+data.batch_delay_s=0.15", "logger.wandb.tags=[ci,continuity]")
    with procs.jobs() as started:
        job = procs.Job(argv, tmp_path / "first.log", env_vars=env)
        started.append(job)
        # the checkpoint of step 8 is saved and the next step has started: then kill -9 everything
        procs.wait_for("step 8 under way", lambda: 8 in procs.checkpoint_steps(run) and 8 in procs.logged_steps(run),
                       240, job=job)
        job.kill()
        (first,) = offline_files(run)
        killed = sorted(rows_by_step(first))
        # every row up to the checkpoint's own step was on disk: the resume from step 8 logs from step 8 on
        assert killed[:8] == list(range(8)), killed
        resumed = procs.Job(argv, tmp_path / "second.log", env_vars=env)
        started.append(resumed)
        assert resumed.wait() == 0, resumed.tail()
    out = resumed.output()
    assert "resuming from step 8" in out
    assert not warnings(out) and not list(run.glob("wandb/run-*")), "WANDB_MODE=offline was not honoured"
    assert f"run dir: {run}\n" in out and "…" not in out
    files = offline_files(run)
    assert len(files) == 2
    sessions = [rows_by_step(f) for f in files]
    assert min(sessions[1]) == 8, sorted(sessions[1])  # no restart of the axis at 0
    # the data check's table joins each session's first row, on the axis (it used to take a row of its own at 0)
    assert [any(k.startswith("data_check/") for k in rows[first]) for rows, first in zip(sessions, (0, 8))] == [True, True]
    merged = {**{s: r for s, r in sessions[0].items() if s < 8}, **sessions[1]}
    assert sorted(s for s, r in merged.items() if "train/loss" in r) == list(range(12))
    losses = csv_losses(run)
    for step, row in merged.items():
        if "train/loss" in row:
            assert row["train/loss"] == pytest.approx(losses[step], rel=1e-6), step
            assert row["train/grad_norm"] > 0 and row["train/lr"] > 0, row
    assert [s for s, r in merged.items() if "val/loss" in r] == [3, 7, 11]
    # run metadata: the experiment as group, job type, tags, and the manifest in the config
    run_record = next(r.run for r in records(files[1]) if r.WhichOneof("record_type") == "run")
    assert (run_record.run_group, run_record.job_type) == ("gpt_tiny_cpu", "train")
    assert set(run_record.tags) == {"ci", "continuity"}
    config = {item.key: item.value_json for item in run_record.config.update}
    assert "manifest" in config and '"git"' in config["manifest"] and KEY not in "".join(config.values())


HOLD_RUN = """
import sys, time, wandb
wandb.init(mode="offline", id="shared01", project="p", dir=sys.argv[1], settings=wandb.Settings(console="off"))
print("holding", flush=True)
time.sleep(600)
"""
LOG_TWO_ROWS = """
import sys
from trainer.tracking.loggers import WandbLogger
logger = WandbLogger(save_dir=sys.argv[1], mode="offline", id="shared01", project="p")
for step in range(2):
    logger.log_metrics({"x": float(step)}, step=step)
logger.finalize("success")
logger.experiment.finish()
print("mode", logger.mode)
"""


def test_a_shared_wandb_service_that_still_holds_a_killed_runs_id_does_not_cost_the_resumed_run_its_rows(tmp_path):
    """W&B's shared service ($WANDB_SERVICE: `wandb beta core start`, or inherited from a parent that used W&B)
    keeps a run id claimed after the process that held it is killed -9, and refuses it to the resumed run
    ("run ID ... is in use"). The trainer's logger then logs to a service of its own: same offline run, no warning."""
    import sys

    wandb_cli = str(Path(sys.executable).parent / "wandb")
    env = procs.env()
    env.pop("WANDB_SERVICE", None)
    started = subprocess.run([wandb_cli, "beta", "core", "start", "--idle-timeout", "3m"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    env["WANDB_SERVICE"] = started.stdout.strip().splitlines()[-1]
    try:
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir(), second.mkdir()
        holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN, str(first)], env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "holding"
        finally:
            holder.kill()
            holder.wait()
        proc = subprocess.run([sys.executable, "-c", LOG_TWO_ROWS, str(second)], cwd=procs.ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "mode offline" in proc.stdout, proc.stdout + proc.stderr[-3000:]
        assert not warnings(proc.stdout + proc.stderr), proc.stderr[-3000:]
        (ours,) = offline_files(second)
        assert [(s, r["x"]) for s, r in sorted(rows_by_step(ours).items())] == [(0, 0.0), (1, 1.0)]
    finally:
        subprocess.run([wandb_cli, "beta", "core", "stop"], env=env, capture_output=True, timeout=60)
