"""Activation checkpointing per transformer block: the same losses as without it, under every strategy
(2 gloo ranks through the real CLI, against the single-process reference with the strategy's own
tolerance; one process through the CLI too), and bitwise the same gradients in one process. Checkpointing
never changes a loss, so each run through the CLI also shows, in every rank's log, that its blocks were
wrapped: without that line the setting could be dropped on the way and the losses would still match."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.distributed.conftest import LIVE, STEPS
from tests.distributed.helpers import TINY, assert_same_curve, losses, ok, train
from tests.distributed.test_equivalence import TOLERANCE
from trainer.distributed.activation_checkpointing import apply_activation_checkpointing
from trainer.models.gpt import GPT


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_one_process_gradients_are_bitwise_those_without_checkpointing(mode):
    torch.manual_seed(0)
    plain = GPT(vocab_size=64, seq_len=32, d_model=64, n_layers=3, n_heads=4)
    wrapped = copy.deepcopy(plain)
    assert apply_activation_checkpointing(wrapped, mode) == 3  # one wrapper per block
    ids = torch.randint(0, 64, (4, 33))
    losses_ = []
    for net in (plain, wrapped):
        loss = net(ids[:, :-1], ids[:, 1:])
        loss.backward()
        losses_.append(loss.item())
    assert losses_[0] == losses_[1]
    grads = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in wrapped.named_parameters()}
    for name, p in plain.named_parameters():
        assert torch.equal(p.grad, grads[name]), name
    # Checkpoints are the same with and without the wrappers (their state-dict hooks drop the prefix).
    assert list(wrapped.state_dict()) == list(plain.state_dict())


# strategy -> mode: every strategy family once, selective under the sharded one that compiles per block
STRATEGY_MODES = {"ddp": "full", "fsdp": "full", "fsdp2": "selective", "deepspeed_zero3": "full"}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", [pytest.param(s, marks=pytest.mark.extended) if s in ("fsdp", "deepspeed_zero3") else s
                                      for s in STRATEGY_MODES])  # default suite: ddp and fsdp2
def test_two_ranks_with_checkpointing_follow_the_reference(strategy, runs):
    mode = STRATEGY_MODES[strategy]
    run = runs.one_session(strategy, f"trainer.activation_checkpointing={mode}")
    want = losses(runs.reference())
    assert sorted(losses(run)) == list(range(STEPS))
    assert_same_curve(losses(run), want, TOLERANCE[strategy])
    assert_blocks_wrapped(run, mode, ranks=2)


@pytest.mark.slow
def test_one_process_through_the_trainer_follows_the_reference(runs, tmp_path, shared_cache):
    # strategy=single, accumulating 2 micro-batches as the reference does: the same numbers, in one session
    run = tmp_path / "single-selective"
    ok(train(run, shared_cache, f"trainer.max_steps={STEPS}", *LIVE, "strategy=single",
             "trainer.accumulate_grad_batches=2", "trainer.activation_checkpointing=selective"))
    assert_same_curve(losses(run), losses(runs.reference()), 1e-6)
    assert_blocks_wrapped(run, "selective", ranks=1)


def assert_blocks_wrapped(run, mode: str, ranks: int) -> None:
    blocks = next(int(a.split("=")[1]) for a in TINY if a.startswith("model.n_layers="))
    for rank in range(ranks):
        log = (run / "logs" / f"rank{rank}.log").read_text()
        assert f"activation checkpointing {mode}: {blocks} blocks wrapped" in log, f"rank {rank}:\n{log[-2000:]}"
