"""Our GPT and transformers' LlamaForCausalLM are the same function: both directions of the weight mapping."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from trainer.errors import UserError
from trainer.models.gpt import GPT, GPTConfig
from trainer.models.llama_hf import hf_config, load_hf_weights, to_hf_state

transformers = pytest.importorskip("transformers")


def small_gpt(vocab=300, tie=True, seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab, seq_len=24, d_model=32, n_layers=2, n_heads=4, rope_theta=500.0, norm_eps=1e-5,
               tie_embeddings=tie) | kw
    net = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # norms away from 1 so a swapped norm weight would show; weights large enough
        for name, p in net.named_parameters():  # that logits (and greedy choices) vary with the context
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3)
    return net


def save_as_hf(net: GPT, path):
    from safetensors.torch import save_file

    path.mkdir()
    save_file(to_hf_state(net.state_dict(), net.cfg), str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config(net.cfg)))
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("tie", [True, False])
def test_exported_llama_gives_our_logits(tmp_path, tie):
    real_vocab = 300  # the embedding is padded to 320: the export keeps the 300 true rows
    net = small_gpt(vocab=real_vocab, tie=tie)
    assert net.embed.weight.shape[0] == 320
    hf = save_as_hf(net, tmp_path / "hf")
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.vocab_size == real_vocab and hf.config.rope_parameters["rope_theta"] == 500.0
    assert hf.config.rms_norm_eps == 1e-5 and hf.config.intermediate_size == net.cfg.hidden
    ids = torch.randint(0, real_vocab, (3, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = net(ids), hf(input_ids=ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_exported_llama_generates_our_greedy_tokens(tmp_path):
    net = small_gpt(vocab=256, n_layers=3)
    hf = save_as_hf(net, tmp_path / "hf")
    prompt = torch.randint(0, 256, (2, 4), generator=torch.Generator().manual_seed(2))
    ours = net.generate(prompt, max_new_tokens=20, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert ours.shape == (2, 24) and torch.equal(ours, theirs)
    assert len(set(ours[0, 4:].tolist())) > 1  # not a degenerate repeat of one token


def test_init_from_a_random_llama_reproduces_it(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=250, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=24,
                                   rms_norm_eps=1e-5, rope_theta=2000.0, tie_word_embeddings=False)
    torch.manual_seed(3)
    llama = transformers.LlamaForCausalLM(cfg).eval()
    llama.save_pretrained(str(tmp_path / "llama"))
    net = GPT(GPTConfig(vocab_size=250, seq_len=24, d_model=32, n_layers=2, n_heads=4, mlp_hidden=96,
                        rope_theta=2000.0, norm_eps=1e-5, tie_embeddings=False)).eval()
    assert net.embed.weight.shape[0] == 256  # padded
    assert load_hf_weights(net, tmp_path / "llama") == 250
    assert not net.embed.weight[250:].any() and not net.lm_head.weight[250:].any()  # padding untouched (zero)
    ids = torch.randint(0, 250, (2, 24), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (net(ids) - llama(input_ids=ids).logits).abs().max().item() <= 1e-5
    # and back: our export of the loaded net is the original checkpoint, tensor for tensor
    theirs = llama.state_dict()
    for name, t in to_hf_state(net.state_dict(), net.cfg).items():
        assert torch.equal(t, theirs[name]), name


def test_init_from_refuses_a_config_the_gpt_does_not_compute(tmp_path):
    """Equal shapes, another function: the config.json values are compared too (as transformers 4 or 5 writes them)."""
    net = GPT(GPTConfig(vocab_size=256, seq_len=16, d_model=32, n_layers=1, n_heads=4, mlp_hidden=96))
    base = tmp_path / "base"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=4, tie_word_embeddings=True)).save_pretrained(str(base))
    load_hf_weights(net, base)  # as saved: accepted
    for i, (change, needle) in enumerate((
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}, "rope_theta is 500000.0 but model.rope_theta=10000.0"),
        ({"rope_parameters": None, "rope_theta": 500000.0}, "rope_theta is 500000.0"),  # transformers 4.x style
        ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}}, "scaled RoPE"),
        ({"rms_norm_eps": 1e-5}, "norm_eps is 1e-05 but model.norm_eps=1e-06"),
        ({"tie_word_embeddings": False}, "tie_embeddings=false"),
    )):
        d = tmp_path / f"changed{i}"
        shutil.copytree(base, d)
        config = json.loads((d / "config.json").read_text()) | change
        (d / "config.json").write_text(json.dumps(config))
        with pytest.raises(UserError, match=re.escape(needle)):
            load_hf_weights(net, d)


def test_init_from_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "llama"))
    net = GPT(GPTConfig(vocab_size=256, seq_len=16, d_model=32, n_layers=1, n_heads=4, mlp_hidden=128))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(UserError) as e:
        load_hf_weights(net, tmp_path / "llama")
    msg = str(e.value)
    assert "'model.embed_tokens.weight'" in msg and "(256, 64)" in msg and "(256, 32)" in msg
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing loaded


def test_init_from_refuses_grouped_query_attention_and_extra_layers(tmp_path):
    gqa = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=96, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(gqa).save_pretrained(str(tmp_path / "gqa"))
    net = GPT(GPTConfig(vocab_size=256, seq_len=16, d_model=32, n_layers=1, n_heads=4, mlp_hidden=96, tie_embeddings=False))
    with pytest.raises(UserError, match=r"k_proj.weight'.*\(16, 32\).*\(32, 32\)"):
        load_hf_weights(net, tmp_path / "gqa")
    deep = transformers.LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(deep).save_pretrained(str(tmp_path / "deep"))
    with pytest.raises(UserError, match=r"model\.layers\.1\..*n_layers=1"):
        load_hf_weights(net, tmp_path / "deep")
    with pytest.raises(UserError, match="no model.safetensors"):
        load_hf_weights(net, tmp_path)


def test_only_the_gpt_has_a_hugging_face_form():
    from trainer.export.hf import check_exportable
    from trainer.models.mlp import MLPClassifier

    assert check_exportable(small_gpt()) is not None
    with pytest.raises(UserError, match="format=safetensors"):
        check_exportable(MLPClassifier(num_features=4, num_classes=3))
