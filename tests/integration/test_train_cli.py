"""The real command line, end to end: training, resume, damaged checkpoints, export, generate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, cli

TINY = [
    "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.seq_len=32",
    "data.batch_size=4", "data.val_batches=2", "trainer.val_every_steps=5", "trainer.log_every_steps=1",
    "checkpoint.every_n_steps=5", "trainer.progress_bar=false", "logger.wandb=false",
]


def train(run_dir: Path, cache: Path, *extra: str, timeout: int = 300):
    return cli("trainer.train", *TINY, f"run.dir={run_dir}", f"paths.cache_dir={cache}", *extra, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc


def full_state(ckpt_dir: Path) -> dict:
    return torch.load(ckpt_dir / "state.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_default_experiment_trains_and_writes_a_complete_run_dir(tmp_path, shared_cache):
    """The default experiment, shortened: loss falls below the corpus's unigram entropy."""
    run = tmp_path / "run"
    proc = ok(cli("trainer.train", f"run.dir={run}", f"paths.cache_dir={shared_cache}", "trainer.max_steps=80",
                  "trainer.val_every_steps=40", "data.val_batches=4", "checkpoint.every_n_steps=40",
                  "model.seq_len=64", "trainer.progress_bar=false", timeout=400))
    out = proc.stdout + proc.stderr
    assert "run summary" in out and str(run) in out
    manifest = json.loads((run / "manifest.json").read_text())
    summary = manifest["summary"]
    assert summary["steps"] == 80
    assert summary["final_val_loss"] < summary["unigram_entropy_nats"], summary
    for key in ("git", "packages", "seed", "command", "host", "python", "device", "data_fingerprint", "start_time", "end_time"):
        assert manifest.get(key) is not None, key
    assert manifest["packages"]["torch"]
    assert (run / "config.yaml").is_file() and (run / "csv" / "metrics.csv").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000040", "step-00000080"]
    # W&B wrote a real offline run, with the id the run dir keeps.
    wandb_id = (run / "wandb_id.txt").read_text().strip()
    offline = list((run / "wandb").glob(f"offline-run-*-{wandb_id}"))
    assert offline and list(offline[0].glob("*.wandb")), "no W&B offline run file"
    assert "wandb sync" in out
    assert "WANDB_API_KEY" not in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_stop_and_resume_is_bitwise_identical(tmp_path, shared_cache):
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    ok(train(straight, shared_cache, "trainer.max_steps=12"))
    ok(train(paused, shared_cache, "trainer.max_steps=12", "run.stop_after_steps=7"))
    ckpts = sorted(p.name for p in (paused / "checkpoints").iterdir())
    assert ckpts[-1] == "step-00000007", ckpts  # stopped after step 7, with a checkpoint
    assert json.loads((paused / "manifest.json").read_text())["summary"]["stopped"] == "stop_after_steps"
    resumed = ok(train(paused, shared_cache, "trainer.max_steps=12"))
    assert "resuming from" in resumed.stdout + resumed.stderr
    a = full_state(straight / "checkpoints" / "step-00000012")
    b = full_state(paused / "checkpoints" / "step-00000012")
    assert a["global_step"] == b["global_step"] == 12
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in opt_a:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a[i][name], opt_b[i][name]), (i, name)


@pytest.mark.slow
def test_damaged_checkpoint_is_skipped_and_named(tmp_path, shared_cache):
    run = tmp_path / "run"
    ok(train(run, shared_cache, "trainer.max_steps=10"))
    newest = run / "checkpoints" / "step-00000010" / "state.ckpt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated, as by a full disk
    proc = ok(train(run, shared_cache, "trainer.max_steps=12"))
    out = proc.stdout + proc.stderr
    assert "step-00000010" in out and "skipping damaged checkpoint" in out
    assert "resuming from step 5" in out
    assert (run / "checkpoints" / "step-00000012" / "manifest.json").is_file()


@pytest.mark.slow
def test_export_and_generate_round_trip(tmp_path, shared_cache):
    from safetensors.torch import load_file

    from trainer.checkpoint.weights import build_net

    run = tmp_path / "run"
    ok(train(run, shared_cache, "trainer.max_steps=5"))
    ok(cli("trainer.export", f"run.dir={run}"))
    exported = load_file(str(run / "export" / "model.safetensors"))
    live = full_state(run / "checkpoints" / "step-00000005")["state_dict"]
    for k, v in exported.items():
        assert torch.equal(v, live[f"net.{k}"]), k
    net = build_net(run)
    net.load_state_dict(exported)
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["step"] == 5 and config["model"]["vocab_size"] == 256
    gen = ok(cli("trainer.generate", f"run.dir={run}", "prompt=import ", "tokens=20"))
    assert gen.stdout.startswith("import ") and len(gen.stdout.rstrip("\n")) >= len("import ")


@pytest.mark.slow
def test_a_classifier_trains_through_the_same_cli(tmp_path):
    run = tmp_path / "run"
    proc = ok(cli("trainer.train", "experiment=classifier_tabular", f"run.dir={run}", "trainer.max_steps=150",
                  "trainer.progress_bar=false", "logger.wandb=false", "trainer.val_every_steps=50"))
    import csv

    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    accs = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert accs and accs[-1] > 0.8, accs
    assert (run / "checkpoints" / "step-00000150" / "manifest.json").is_file()
    assert "run summary" in proc.stdout


@pytest.mark.slow
def test_users_own_data_module_plugs_in(tmp_path):
    run = tmp_path / "run"
    # Its constructor's arguments are settable as they are (no `+`): the YAML lists only what differs.
    ok(cli("trainer.train", "data=tabular", "data._target_=tests.fixtures.toy_data.ToyTokens", "data.seq_len=16",
           "data.vocab_size=32", "data.batch_size=4", "model.seq_len=16", "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
           "trainer.max_steps=6", "checkpoint.every_n_steps=3", "trainer.val_every_steps=3",
           "trainer.progress_bar=false", "logger.wandb=false", f"run.dir={run}"))
    assert json.loads((run / "model.json").read_text())["vocab_size"] == 32
    assert (run / "checkpoints" / "step-00000006").is_dir()


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to pin a run to one of them")
def test_a_cpu_run_uses_the_cpus_it_may_run_on_not_the_machines(tmp_path, shared_cache):
    """Pinned to one CPU (as taskset, a container's cpuset or a SLURM allocation pin it), without OMP_NUM_THREADS,
    the run takes one intra-op thread, not one per core of the machine (which would spin on cores it cannot
    use); OMP_NUM_THREADS, when set, is the user's choice and wins."""
    one_cpu = min(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=str(ROOT), WANDB_MODE="offline")

    def threads(run: Path, **more: str) -> int:
        proc = subprocess.run([sys.executable, "-m", "trainer.train", *TINY, f"run.dir={run}", f"paths.cache_dir={shared_cache}",
                               "trainer.max_steps=1"], cwd=ROOT, env={**env, **more}, capture_output=True, text=True,
                              timeout=300, preexec_fn=lambda: os.sched_setaffinity(0, {one_cpu}))
        ok(proc)
        return json.loads((run / "manifest.json").read_text())["cpu_threads"]

    assert threads(tmp_path / "pinned") == 1
    assert threads(tmp_path / "omp", OMP_NUM_THREADS="3") == 3


@pytest.mark.slow
def test_multirun_gives_one_run_dir_per_point(tmp_path, shared_cache):
    proc = cli("trainer.train", "-m", "optim.lr=1e-3,2e-3", *TINY, "trainer.max_steps=2",
               f"paths.runs_dir={tmp_path}", f"paths.cache_dir={shared_cache}", "run.id=sweep")
    ok(proc)
    dirs = sorted(p.name for p in (tmp_path / "gpt_tiny_cpu").iterdir())
    assert dirs == ["sweep-0", "sweep-1"]
    lrs = sorted(float(__import__("yaml").safe_load((tmp_path / "gpt_tiny_cpu" / d / "config.yaml").read_text())["optim"]["lr"]) for d in dirs)
    assert lrs == [1e-3, 2e-3]


def test_cfg_job_and_help_work():
    proc = ok(cli("trainer.train", "--cfg", "job", "trainer.max_steps=7"))
    assert "max_steps: 7" in proc.stdout
    helped = ok(cli("trainer.train", "--help"))
    assert "experiment" in helped.stdout and "strategy" in helped.stdout
