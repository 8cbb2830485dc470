"""On a GPU: the memory plan's per-phase prediction for one process (trainer/planning: the traced step,
laid out for strategy=single) against what CUDA's caching allocator held, torch.cuda.max_memory_allocated,
within 15% (the same bound as the CPU check against malloc, tests/unit/test_plan.py).

The measured loop is the one Lightning runs and the trace follows: forward, zero_grad (set to None),
backward, global-norm clipping, AdamW step; the second step is measured, phase by phase, above the
memory held before the net was built (after a warm-up matmul, so cuBLAS's workspace is not counted).
AdamW runs per parameter (foreach=False), as the trace runs it, and with its CUDA default (foreach),
which holds one more list of temporaries during the step.
"""
from __future__ import annotations

import pytest
import torch

from trainer.models.gpt import GPT
from trainer.planning.memory import Layout, plan_memory
from trainer.planning.trace import PHASES, trace_step

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# ~20M parameters: the model state (~320 MB with AdamW) and the activations dwarf the allocator's own
# rounding and the few MB of kernels' workspaces.
SHAPE = dict(vocab_size=8192, seq_len=256, d_model=512, n_layers=4, n_heads=8)
BATCH = 8
TOLERANCE = 0.15


def _measured(foreach: bool | None) -> dict[str, int]:
    """Bytes the caching allocator held at each phase's peak of the second step, above the baseline."""
    device = torch.device("cuda")
    a = torch.randn(64, 64, device=device)
    (a @ a).sum().item()  # cuBLAS handle and workspace exist before the baseline
    del a
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()

    torch.manual_seed(0)
    net = GPT(**SHAPE).to(device)
    params = list(dict.fromkeys(net.parameters()))
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2]},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=1e-3,
                            foreach=foreach)
    ids = torch.randint(0, SHAPE["vocab_size"], (BATCH, SHAPE["seq_len"] + 1), device=device)
    batch = (ids[:, :-1].contiguous(), ids[:, 1:].contiguous())
    del ids
    peaks: dict[str, int] = {}

    def phase_start() -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def phase_end(name: str, measure: bool) -> None:
        torch.cuda.synchronize()
        if measure:
            peaks[name] = torch.cuda.max_memory_allocated() - baseline

    for step in range(2):
        measure = step == 1
        phase_start()
        loss = net(*batch)
        phase_end("forward", measure)
        opt.zero_grad(set_to_none=True)
        phase_start()
        loss.backward()
        del loss
        phase_end("backward", measure)
        phase_start()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        phase_end("optimizer", measure)
    return peaks


def _fake_batch():
    ids = torch.zeros(BATCH, SHAPE["seq_len"], dtype=torch.long)  # made inside the trace: a fake tensor
    return ids, ids.clone()


@pytest.mark.parametrize("foreach", [False, None], ids=["per-parameter", "cuda-default"])
def test_planned_phases_match_max_memory_allocated_within_15_percent(foreach):
    measured = _measured(foreach)
    trace = trace_step(lambda: GPT(**SHAPE), _fake_batch, micro_batch=BATCH)
    plan = plan_memory(trace, Layout("single"))
    errors = {phase: plan.phases[phase].total / measured[phase] - 1 for phase in PHASES}
    report = ", ".join(f"{p}: plan {plan.phases[p].total / 2**20:.1f} MiB, measured {measured[p] / 2**20:.1f} MiB "
                       f"({errors[p]:+.1%})" for p in PHASES)
    print(report)  # pytest -s shows the figures for the docs
    assert all(abs(e) <= TOLERANCE for e in errors.values()), report
