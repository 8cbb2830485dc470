"""The memory plan: its traced step against the allocator on a real step, the strategy layouts against
the ZeRO formula, and the plan as users meet it (python -m trainer.plan, the check before launch)."""
from __future__ import annotations

import gc

import pytest
import torch

from tests.conftest import cli
from trainer.models.gpt import GPT
from trainer.observability.host_memory import PeakSampler, malloc_in_use
from trainer.planning.memory import Layout, plan_memory, zero_formula
from trainer.planning.trace import trace_step

SHAPE = dict(vocab_size=256, seq_len=128, d_model=256, n_layers=2, n_heads=4)
BATCH = 8


def _batch():
    ids = torch.zeros(BATCH, SHAPE["seq_len"], dtype=torch.long)
    return ids, ids.clone()


def _step(shape: dict, mode: str, steps: int, sampler: PeakSampler | None = None) -> None:
    from trainer.distributed.activation_checkpointing import apply_activation_checkpointing

    torch.manual_seed(0)
    net = GPT(**shape)
    apply_activation_checkpointing(net, mode)
    params = list(dict.fromkeys(net.parameters()))
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2]},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=1e-3)
    ids = torch.randint(0, 256, (BATCH, shape["seq_len"] + 1))
    batch = (ids[:, :-1].contiguous(), ids[:, 1:].contiguous())
    for step in range(steps):  # Lightning's order: forward, zero_grad, backward, clip, step
        measure = sampler is not None and step == steps - 1
        if measure:
            sampler.phase("forward")
        loss = net(*batch)
        if measure:
            sampler.phase("backward")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        del loss
        if measure:
            sampler.phase("optimizer")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if measure:
            sampler.phase(None)


def _measured_step(mode: str) -> dict[str, int]:
    """Peak malloc bytes per phase of a real second step, the loop Lightning runs (one thread), above
    a baseline taken after a warm-up step of a smaller model (lazy initialisations are not the step's)."""
    _step({**SHAPE, "d_model": 32, "n_layers": 1}, mode, steps=1)
    gc.collect()  # earlier tests' cycles (checkpoint wrappers' hooks) are not freed inside the measurement
    sampler = PeakSampler()
    sampler.start()
    try:
        _step(SHAPE, mode, steps=2, sampler=sampler)
    finally:
        sampler.stop()
    return {phase: peak["malloc"] for phase, peak in sampler.peaks.items()}


@pytest.mark.skipif(malloc_in_use() is None, reason="needs glibc's mallinfo2 to read the allocator")
@pytest.mark.parametrize("mode", ["none", "full", "selective"])
def test_traced_step_matches_the_allocator_within_15_percent(mode):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: every allocation comes from the arena mallinfo2 reports
    try:
        measured = _measured_step(mode)
    finally:
        torch.set_num_threads(threads)
    trace = trace_step(lambda: GPT(**SHAPE), _batch, micro_batch=BATCH, activation_checkpointing=mode)
    for phase, bytes_ in measured.items():
        predicted = trace.phases[phase].total
        assert abs(predicted / bytes_ - 1) <= 0.15, (phase, predicted, bytes_)
    if mode == "none":
        # Parameters and optimizer state: 4 and 8 bytes per parameter (plus AdamW's step counters).
        assert trace.param_bytes == 4 * trace.n_params
        assert trace.optimizer_bytes == pytest.approx(8 * trace.n_params, rel=1e-3)


def test_activation_checkpointing_reduces_the_traced_activations():
    peaks = {mode: trace_step(lambda: GPT(**SHAPE), _batch, micro_batch=BATCH, activation_checkpointing=mode)
             .phases["forward"].activations for mode in ("none", "selective", "full")}
    assert peaks["full"] < peaks["selective"] < peaks["none"], peaks


def test_strategy_layouts_shard_the_state_as_the_zero_formula_says():
    trace = trace_step(lambda: GPT(**SHAPE), _batch, micro_batch=BATCH)
    psi = trace.param_bytes
    for layout, (p, g, o) in [
        (Layout("ddp", 4), (psi, psi, 2 * psi)),
        (Layout("deepspeed", 4, zero_stage=1), (psi, psi, psi / 2)),
        (Layout("deepspeed", 4, zero_stage=2), (psi, psi / 4, psi / 2)),
        (Layout("deepspeed", 4, zero_stage=3), (psi / 4, psi / 4, psi / 2)),
        (Layout("fsdp2", 4), (psi / 4, psi / 4, psi / 2)),
    ]:
        f = zero_formula(psi, layout)
        assert (f.params, f.grads, f.optimizer) == pytest.approx((p, g, o)), layout
        plan = plan_memory(trace, layout)
        optimizer_phase = plan.phases["optimizer"]
        assert optimizer_phase.optimizer == pytest.approx(o, rel=1e-4), layout  # sharded optimizer state (+ step counters)
        assert plan.formula == f
    # Sharding lowers the peak; the optimizer state of an offloaded ZeRO-3 leaves the device.
    single = plan_memory(trace, Layout("single")).device_bytes
    assert plan_memory(trace, Layout("fsdp2", 4)).device_bytes < single
    offload = plan_memory(trace, Layout("deepspeed", 4, zero_stage=3, offload_optimizer=True, offload_params=True))
    assert offload.phases["optimizer"].optimizer == 0 and offload.host > 0


TINY = ["model.d_model=128", "model.n_layers=2", "model.n_heads=2", "model.seq_len=64", "data.batch_size=8",
        "trainer.progress_bar=false", "logger.wandb=false"]


@pytest.mark.slow
def test_plan_cli_prints_the_breakdown_and_what_fits(tmp_path):
    proc = cli("trainer.plan", *TINY, "plan.device_memory_gb=0.5", f"paths.cache_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for word in ("params", "grads", "optimizer", "activations", "temporaries", "ZeRO formula", "step time", "fits: yes",
                 "cheapest configurations that fit"):
        assert word in out, out


@pytest.mark.slow
def test_a_run_that_does_not_fit_is_refused_before_launch_naming_the_fix(tmp_path):
    run = tmp_path / "run"
    # 20 MiB: the model state fits, the activations of micro-batch 8 do not; full checkpointing or a smaller
    # micro-batch does.
    proc = cli("trainer.train", *TINY, "plan.device_memory_gb=0.02", f"run.dir={run}", f"paths.cache_dir={tmp_path}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "the memory plan predicts" in err and "more than the 0.02 GiB available (plan.device_memory_gb)" in err, err
    assert "Fits: strategy=single" in err and "Traceback" not in err, err
    assert not run.exists()


@pytest.mark.slow
def test_the_check_before_launch_plans_the_default_config(tmp_path):
    """Without model.seq_len on the command line (the model's own default, filled in from its signature)."""
    run = tmp_path / "run"
    proc = cli("trainer.train", "plan.device_memory_gb=0.001", "trainer.max_steps=2", "logger.wandb=false",
               f"run.dir={run}", f"paths.cache_dir={tmp_path}")
    assert proc.returncode == 2 and "the memory plan predicts" in proc.stderr, proc.stderr[-3000:]
    assert "could not plan" not in proc.stderr and not run.exists()
