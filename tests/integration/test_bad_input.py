"""Every kind of bad input, through the real command line: one clear message, exit 2, no traceback,
nothing damaged. (Bad overrides run the command's checks in this process: tests/conftest.py.)"""
from __future__ import annotations

import json

import pytest

from tests.conftest import cli, train_checks_in_process

FAST = ["trainer.max_steps=2", "trainer.progress_bar=false", "logger.wandb=false", "model.d_model=32",
        "model.n_layers=1", "model.n_heads=2", "model.seq_len=16", "data.batch_size=2"]


def assert_user_error(proc, *needles: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    assert "error:" in proc.stderr
    for needle in needles:
        assert needle in out, f"{needle!r} not in:\n{out[-2000:]}"


@pytest.mark.parametrize(
    "override, needles",
    [
        ("trainer.max_stepz=5", ("trainer.max_stepz", "max_steps")),
        ("strategy=ddpp", ("ddpp", "'ddp'")),
        ("model=gtp", ("gtp", "gpt")),
        ("optim.lr=abc", ("optim.lr",)),
        ("optim.lr=-0.1", ("optim.lr", "positive")),
        ("data.batch_size=0", ("data.batch_size",)),
        ("trainer.max_steps=-5", ("trainer.max_steps",)),
        ("model.n_heads=3", ("model.d_model=32", "model.n_heads=3", "not divisible")),
        ("model.n_layerz=2", ("model.n_layerz", "n_layers")),
        ("strategy.zero_stage=5", ("zero_stage",)),
    ],
)
def test_bad_override(override, needles, tmp_path):
    # In process (train_checks_in_process): the CLI's own start is the other tests' part.
    proc = train_checks_in_process(*FAST, override, f"paths.runs_dir={tmp_path}")
    assert_user_error(proc, *needles)
    assert not any(tmp_path.iterdir()), "a rejected config must not create a run dir"


def test_missing_data_path(tmp_path, shared_cache):
    missing = tmp_path / "nope"
    proc = cli("trainer.train", *FAST, f"data.path={missing}", f"run.dir={tmp_path / 'run'}", f"paths.cache_dir={shared_cache}")
    assert_user_error(proc, str(missing))


def test_data_dir_without_text(tmp_path, shared_cache):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "blob.bin").write_bytes(b"\x00\x01")
    proc = cli("trainer.train", *FAST, f"data.path={d}", f"run.dir={tmp_path / 'run'}", f"paths.cache_dir={shared_cache}")
    assert_user_error(proc, str(d))


def test_empty_corpus(tmp_path, shared_cache):
    f = tmp_path / "empty.txt"
    f.write_text("")
    proc = cli("trainer.train", *FAST, f"data.path={f}", f"run.dir={tmp_path / 'run'}", f"paths.cache_dir={shared_cache}")
    assert_user_error(proc, "empty")


def test_resume_from_a_file_that_is_not_a_checkpoint(tmp_path, shared_cache):
    bogus = tmp_path / "step-00000003"
    bogus.mkdir()
    (bogus / "state.ckpt").write_text("this is not a checkpoint")
    proc = cli("trainer.train", *FAST, f"run.resume_from={bogus}", f"run.dir={tmp_path / 'run'}", f"paths.cache_dir={shared_cache}")
    assert_user_error(proc, str(bogus))
    assert (bogus / "state.ckpt").read_text() == "this is not a checkpoint"  # untouched


def test_resume_from_a_truncated_checkpoint(tmp_path, shared_cache):
    run = tmp_path / "run"
    first = cli("trainer.train", *FAST, "checkpoint.every_n_steps=2", f"run.dir={run}", f"paths.cache_dir={shared_cache}")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = run / "checkpoints" / "step-00000002"
    state = ckpt / "state.ckpt"
    data = state.read_bytes()
    state.write_bytes(data[:1000])
    proc = cli("trainer.train", *FAST, f"run.resume_from={ckpt}", f"run.dir={tmp_path / 'run2'}", f"paths.cache_dir={shared_cache}")
    assert_user_error(proc, "truncated", str(ckpt))


def test_run_dir_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    proc = cli("trainer.train", *FAST, f"run.dir={blocker / 'run'}")
    assert_user_error(proc, str(blocker / "run"), "not writable")
    assert blocker.read_text() == "x"


def test_export_of_a_non_run_dir(tmp_path):
    assert_user_error(cli("trainer.export", f"run.dir={tmp_path}"), str(tmp_path), "not a run dir")
    assert_user_error(cli("trainer.export", "rundir=x"), "rundir", "run.dir")


def test_gpus_asked_for_where_there_are_none(tmp_path):
    """Checked once, before any rank starts (it was: the error once per rank, torchrun's traceback, exit 1)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = cli("trainer.train", *FAST, "trainer.devices=2", "strategy=fsdp", "trainer.accelerator=gpu",
               f"paths.runs_dir={tmp_path}")
    assert_user_error(proc, "trainer.accelerator=gpu but no CUDA GPU is visible")
    assert proc.stderr.count("error:") == 1 and "torch.distributed" not in proc.stdout + proc.stderr
    assert not any(tmp_path.iterdir()), "nothing is written"


@pytest.mark.parametrize("content, needles", [
    (None, ("no such file",)),
    ("{not json", ("is not valid JSON", "line 1")),
    ("[1, 2]", ("must hold a JSON object",)),
])
def test_a_deepspeed_config_file_that_is_missing_or_bad(tmp_path, content, needles):
    path = tmp_path / "ds.json"
    if content is not None:
        path.write_text(content)
    proc = cli("trainer.train", *FAST, "strategy=deepspeed_zero2", "trainer.devices=2", f"strategy.deepspeed_config={path}",
               f"paths.runs_dir={tmp_path / 'runs'}")
    assert_user_error(proc, "strategy.deepspeed_config", str(path), *needles)
    assert not (tmp_path / "runs").exists()


def test_a_deepspeed_config_file_is_accepted(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": 1234}}))
    proc = cli("launch.torchrun", "--dry-run", "strategy=deepspeed_zero2", "trainer.devices=2",
               f"strategy.deepspeed_config={path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"strategy.deepspeed_config={path}" in proc.stdout  # the job composes it the same way
