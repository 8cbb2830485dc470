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


# --------------------------------------------------------------------------- plan.check modes, in process
def _too_small(check: str):
    from trainer.config import compose_config

    return compose_config([*TINY, "plan.device_memory_gb=0.02", f"plan.check={check}"])


def test_plan_check_error_refuses_warn_launches_with_the_same_message_off_does_not_plan(monkeypatch, caplog):
    import trainer.plan as plan_module
    from trainer.errors import UserError

    with pytest.raises(UserError) as refused:
        plan_module.check_before_launch(_too_small("error"))
    assert "the memory plan predicts" in str(refused.value) and "Fits:" in str(refused.value)
    with caplog.at_level("WARNING", logger="trainer"):
        plan_module.check_before_launch(_too_small("warn"))  # returns: the run launches
    assert [r.getMessage() for r in caplog.records] == [str(refused.value)]

    def no_planning(*a, **k):
        raise AssertionError("plan.check=off must not plan")

    monkeypatch.setattr(plan_module, "plan_config", no_planning)
    caplog.clear()
    plan_module.check_before_launch(_too_small("off"))
    assert not caplog.records


def test_a_plan_that_cannot_be_made_warns_and_launches(monkeypatch, caplog):
    import trainer.plan as plan_module

    def broken(*a, **k):
        raise RuntimeError("an unusual model")

    monkeypatch.setattr(plan_module, "plan_config", broken)
    with caplog.at_level("WARNING", logger="trainer"):
        plan_module.check_before_launch(_too_small("error"))
    assert "could not plan this configuration (RuntimeError: an unusual model)" in caplog.text


# --------------------------------------------------------------------------- the step-time estimate
def _time(strategy: str, world: int, *, zero_stage=0, offload=False, micro_batches=1, recompute=1.0, peak=1e12):
    from trainer.planning.time import estimate_time

    layout = Layout(strategy=strategy, world_size=world, zero_stage=zero_stage, offload_optimizer=offload)
    return estimate_time(flops_per_token=6e6, tokens_per_rank=1000, micro_batches=micro_batches, param_bytes=4e8,
                         layout=layout, recompute=recompute, peak_flops=peak, mfu=0.5, bandwidth_gbps=100.0)


def test_step_time_is_compute_from_flops_or_the_communication_volume_whichever_is_longer():
    one = _time("single", 1)
    assert one.compute_s == pytest.approx(6e9 / (1e12 * 0.5)) and one.comm_bytes == 0 and one.step_s == one.compute_s
    assert _time("single", 1, recompute=4 / 3).compute_s == pytest.approx(one.compute_s * 4 / 3)  # full AC: a 2nd forward
    ring = 3 / 4
    ddp = _time("ddp", 4, micro_batches=8)
    assert ddp.comm_bytes == pytest.approx(2 * 4e8 * ring)  # one all-reduce per step, whatever the accumulation
    zero2 = _time("deepspeed", 4, zero_stage=2, micro_batches=8)
    assert zero2.comm_bytes == pytest.approx(4e8 * ring * 9)  # reduce-scatter per micro-batch + one all-gather
    for sharded in (_time("fsdp2", 4, micro_batches=8), _time("deepspeed", 4, zero_stage=3, micro_batches=8)):
        assert sharded.comm_bytes == pytest.approx(3 * 4e8 * ring * 8)
        assert sharded.comm_s == pytest.approx(sharded.comm_bytes / 100e9)
        assert sharded.step_s == max(sharded.compute_s, sharded.comm_s)
    offload = _time("deepspeed", 4, zero_stage=2, offload=True)
    assert offload.comm_s == pytest.approx(_time("deepspeed", 4, zero_stage=2).comm_s + 2 * 4e8 / 4 / 25e9)
    assert _time("ddp", 4, peak=None).step_s is None  # no known peak: no estimate rather than a made-up one
