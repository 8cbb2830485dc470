"""What the trainer does on every step beyond the hand-written loop's work: no host read of a device
value between logging steps, no dispatch of callback hooks nobody implements, no telemetry thread
from an offline W&B run, a preemption check that does not wait for the GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from tests.conftest import ROOT
from trainer.distributed.preemption import PreemptionFlag

NANO = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.seq_len=32", "data.batch_size=4"]


def _python(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)


def test_no_host_read_of_a_tensor_between_logging_steps(shared_cache):
    """The real fit path with every default on (progress bar, CSV and W&B loggers, PerfMonitor,
    checkpoint and preemption callbacks): between two logging steps neither the trainer nor
    Lightning calls .item() (or anything else that waits for a GPU tensor's value). Lightning 2.6
    itself reads every progress-bar metric after every batch: train/loss is logged without
    prog_bar, and the bar still shows it."""
    proc = _python(["tests/fixtures/host_syncs.py", "11", "19", *NANO, "trainer.log_every_steps=10",
                    f"paths.cache_dir={shared_cache}"], env={"TRAINER_CACHE": str(shared_cache)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    assert result["calls"] == {}, f"host reads in {result['steps']} steps without logging: {result['calls']}"
    assert "train/loss" in result["bar"], result["bar"]


def test_the_host_read_counter_sees_the_reads_of_a_logging_step(shared_cache):
    """The positive control of the test above: the same run, with a window that holds a logging step
    (step 10), where the trainer and Lightning do read the loss. The counter must see both, the
    progress bar's read in trainer/ and Lightning's metric conversion, or an empty count above would
    only mean that the wrapper never matched (a wrong WATCHED path, a method Lightning stopped using)."""
    proc = _python(["tests/fixtures/host_syncs.py", "5", "15", *NANO, "trainer.log_every_steps=10",
                    f"paths.cache_dir={shared_cache}"], env={"TRAINER_CACHE": str(shared_cache)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    calls = result["calls"]
    assert any("/trainer/tracking/console.py:" in where for where in calls), calls
    assert any(where.startswith(("pytorch_lightning/", "lightning_fabric/")) for where in calls), calls


def test_callback_hooks_nobody_implements_are_not_dispatched():
    import pytorch_lightning as pl

    from trainer.build import PER_BATCH_HOOKS, skip_unused_batch_hooks

    class OnlyBatchEnd(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            pass

    cb = skip_unused_batch_hooks([OnlyBatchEnd()])[0]
    assert callable(cb.on_train_batch_end)
    for hook in PER_BATCH_HOOKS:
        if hook != "on_train_batch_end":
            assert getattr(cb, hook) is None, hook  # Lightning's `callable(fn)` check skips it
    assert callable(cb.on_train_start)  # once-per-run hooks stay as they are


WANDB_OFFLINE_LOGS = """
import sys, tempfile
from pathlib import Path
from trainer.tracking.loggers import WandbLogger
run = Path(tempfile.mkdtemp())
wb = WandbLogger(str(run), project="p", mode="offline", name="t", id="t0", config={})
wb.log_metrics({"train/loss": 1.0}, step=1)
wb.log_metrics({"train/loss": 0.5}, step=2)
print("otel" if "opentelemetry.sdk.metrics" in sys.modules else "quiet")
wb.finalize("success")
"""


def test_an_offline_wandb_run_starts_no_telemetry_exporter():
    """W&B 0.31 builds an OpenTelemetry exporter at the first logged metric (imports on the training
    thread, a thread posting to W&B's servers) unless WANDB_MODE=offline is in the environment; a
    run offline by `logger.wandb.mode` (the default without an API key) gets it too, so the trainer
    turns it off. The calibration run (W&B's reporting forced on) shows the check would see it."""
    as_a_user_runs = {"WANDB_MODE": None, "WANDB_API_KEY": None}
    quiet = _python(["-c", WANDB_OFFLINE_LOGS], env=as_a_user_runs)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stdout.strip().splitlines()[-1] == "quiet"
    calibration = _python(["-c", WANDB_OFFLINE_LOGS], env={**as_a_user_runs, "WANDB_ERROR_REPORTING": "true"})
    assert calibration.returncode == 0, calibration.stderr[-3000:]
    assert calibration.stdout.strip().splitlines()[-1] == "otel"


# ---- the preemption agreement ------------------------------------------------------------------


@pytest.fixture
def one_rank_group(request):
    """A real one-process group (gloo on CPU, nccl on CUDA): the all-reduce runs for real; the trainer
    says world_size 2 so that the flag takes its multi-rank path."""
    backend = request.param
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(29500 + os.getpid() % 1000)
    dist.init_process_group(backend, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _trainer(device: str, step: int):
    return SimpleNamespace(world_size=2, global_step=step, strategy=SimpleNamespace(root_device=torch.device(device)))


def _first_agreed_step(flag: PreemptionFlag, device: str, signal_at: int, steps: int = 12) -> int | None:
    for step in range(1, steps):
        if step == signal_at:
            flag.signalled_at, flag.signal_name = 1.0, "SIGUSR1"
        if flag.agreed(_trainer(device, step)):
            return step
    return None


@pytest.mark.parametrize("one_rank_group", ["gloo"], indirect=True)
def test_on_cpu_ranks_agree_at_the_step_of_the_signal(one_rank_group):
    assert _first_agreed_step(PreemptionFlag(), "cpu", signal_at=4) == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("one_rank_group", ["nccl"], indirect=True)
def test_on_gpus_the_agreement_is_read_two_steps_later_without_a_sync(one_rank_group):
    torch.cuda.set_device(0)
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        step = _first_agreed_step(PreemptionFlag(), "cuda:0", signal_at=4)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert step == 4 + PreemptionFlag.LAG_STEPS_ON_GPU
