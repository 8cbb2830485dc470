"""The GPT's embedding is padded to a multiple of 64 rows; the padding is never in the loss and takes no
probability mass: the loss, its gradients and the logits equal those of an unpadded model with the same weights."""
import pytest
import torch

from trainer.models.gpt import GPT, GPTConfig

SHAPE = dict(seq_len=16, d_model=32, n_layers=1, n_heads=2)


def padded_and_reference(vocab: int, fused_loss: bool, tie: bool = True):
    torch.manual_seed(0)
    padded = GPT(GPTConfig(vocab_size=vocab, fused_loss=fused_loss, tie_embeddings=tie, **SHAPE))
    reference = GPT(GPTConfig(vocab_size=vocab, vocab_multiple=1, fused_loss=fused_loss, tie_embeddings=tie, **SHAPE))
    with torch.no_grad():  # give the padding rows values: masking, not zeros, must keep them out
        padded.embed.weight[vocab:].normal_()
        padded.lm_head.weight[vocab:].normal_()
    reference.load_state_dict({k: v[:vocab] if v.shape[0] == padded.cfg.padded_vocab_size else v
                               for k, v in padded.state_dict().items()})
    return padded, reference


def test_padded_vocab_size():
    assert GPTConfig(vocab_size=50257).padded_vocab_size == 50304
    assert GPTConfig(vocab_size=256).padded_vocab_size == 256
    assert GPTConfig(vocab_size=300, vocab_multiple=1).padded_vocab_size == 300
    m = GPT(GPTConfig(vocab_size=300, **SHAPE))
    assert m.embed.weight.shape[0] == m.lm_head.weight.shape[0] == 320
    assert m.embed.weight[300:].abs().sum() == 0  # never used: initialised to zero


@pytest.mark.parametrize("fused_loss", [False, True])
@pytest.mark.parametrize("tie", [True, False])
def test_padding_is_not_in_the_loss_nor_its_gradients(fused_loss, tie):
    padded, reference = padded_and_reference(300, fused_loss, tie)
    x, y = torch.randint(0, 300, (3, 16)), torch.randint(0, 300, (3, 16))
    loss, ref_loss = padded(x, y), reference(x, y)
    assert torch.allclose(loss, ref_loss, atol=1e-6, rtol=1e-6)
    loss.backward()
    ref_loss.backward()
    for (name, p), (_, r) in zip(padded.named_parameters(), reference.named_parameters()):
        if p.shape[0] == 320:
            assert torch.allclose(p.grad[:300], r.grad, atol=1e-6), name
            assert p.grad[300:].abs().max() == 0, name  # no gradient reaches the padding
        else:
            assert torch.allclose(p.grad, r.grad, atol=1e-6), name


def test_logits_cover_the_true_vocabulary_only():
    padded, reference = padded_and_reference(300, fused_loss=False)
    x = torch.randint(0, 300, (2, 16))
    logits = padded(x)
    assert logits.shape == (2, 16, 300)
    assert torch.allclose(logits, reference(x), atol=1e-6)
    # sampling draws real tokens only, even with the padding rows made attractive
    with torch.no_grad():
        padded.lm_head.weight[300:] = 100.0
    assert int(padded.generate(x[:, :4], max_new_tokens=8, temperature=1.0).max()) < 300
