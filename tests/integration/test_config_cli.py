"""The Lightning-Hydra habits through the real command line, in one short run: your own config dir,
another optimizer and schedule, a TensorBoard logger beside the CSV log, your own callback, an extra
pl.Trainer argument; the metrics beside the loss; the CPU verdict's advice; the run dir printed whole."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.conftest import cli

pytestmark = pytest.mark.slow

MINE = """# @package _global_
run:
  name: mine
model:
  d_model: 32
  n_layers: 1
  n_heads: 2
  seq_len: 32
data:
  batch_size: 4
  val_batches: 3
trainer:
  accelerator: cpu
  max_steps: 6
  val_every_steps: 3
  log_every_steps: 1
  progress_bar: false
checkpoint:
  every_n_steps: 3
"""


def test_user_configs_optimizer_schedule_loggers_callbacks_and_trainer_arguments(tmp_path, shared_cache):
    mine = tmp_path / "my-configs"
    (mine / "experiment").mkdir(parents=True)
    (mine / "experiment" / "mine.yaml").write_text(MINE)
    run, probe = tmp_path / ("run-" + "y" * 80), tmp_path / "probe.jsonl"
    proc = cli("trainer.train", "--config-dir", str(mine), "experiment=mine", "optim=sgd", "scheduler=constant",
               "scheduler.warmup_steps=2", "logger=[csv,tensorboard]", "+callbacks.probe._target_=tests.fixtures.callbacks.StepProbe",
               f"+callbacks.probe.path={probe}", "trainer.extra.limit_val_batches=1", f"run.dir={run}",
               f"paths.cache_dir={shared_cache}", env={"COLUMNS": "60"}, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    lines = [json.loads(x) for x in probe.read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6] and {x["optimizer"] for x in lines} == {"SGD"}
    assert {x["limit_val_batches"] for x in lines} == {1}  # trainer.extra reached pl.Trainer
    state = torch.load(run / "checkpoints" / "step-00000006" / "state.ckpt", map_location="cpu", weights_only=True)
    groups = state["optimizer_states"][0]["param_groups"]
    assert groups[0]["nesterov"] is True and groups[0]["momentum"] == 0.9 and groups[1]["weight_decay"] == 0.0
    assert all("momentum_buffer" in s for s in state["optimizer_states"][0]["state"].values())
    rows = [r for r in csv.DictReader(open(run / "csv" / "metrics.csv")) if r.get("train/lr")]
    lr = {int(r["step"]): float(r["train/lr"]) for r in rows}
    assert lr[0] == pytest.approx(0.05) and all(lr[s] == pytest.approx(0.1) for s in range(1, 6))  # warmup 2, then constant
    assert all(float(r["train/grad_norm"]) > 0 for r in rows)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not (run / "wandb").exists()  # logger=[csv,tensorboard]: no W&B
    assert json.loads((run / "manifest.json").read_text())["summary"]["steps"] == 6
    # on a CPU the compute-bound advice names only what was measured to help on a CPU
    fix = next(f["fix"] for f in json.loads((run / "perf" / "verdict.json").read_text())["verdict"]["findings"]
               if f["rule"] == "compute-bound")
    assert fix.startswith("the CPU is the limit") and "kernels=fused" not in fix and "GPU" not in fix
    assert f"run dir: {run}\n" in proc.stdout and "…" not in proc.stdout  # whole, at a 60-column terminal


def test_hparams_search_with_optuna_minimises_the_run_objective(tmp_path, shared_cache):
    """`-m hparams_search=optuna`: each trial is a run (its own run dir); Optuna gets its final_val_loss."""
    import yaml

    proc = cli("trainer.train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "model.d_model=32",
               "model.n_layers=1", "model.n_heads=2", "model.seq_len=16", "data.batch_size=4", "data.val_batches=2",
               "trainer.max_steps=4", "trainer.val_every_steps=2", "checkpoint.every_n_steps=4", "trainer.progress_bar=false",
               "logger.wandb=false", f"paths.runs_dir={tmp_path}", f"paths.cache_dir={shared_cache}", timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    runs = sorted((tmp_path / "gpt_tiny_cpu").iterdir())
    assert len(runs) == 2
    losses = [json.loads((r / "manifest.json").read_text())["summary"]["final_val_loss"] for r in runs]
    lrs = {yaml.safe_load((r / "config.yaml").read_text())["optim"]["lr"] for r in runs}
    assert len(lrs) == 2 and all(1e-4 <= lr <= 1e-2 for lr in lrs)  # sampled from the search space
    (result,) = tmp_path.glob(".sweeps/*/optimization_results.yaml")
    assert yaml.safe_load(result.read_text())["best_value"] == pytest.approx(min(losses))
