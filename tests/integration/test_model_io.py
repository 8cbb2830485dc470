"""A trained run leaves as a model others use: HF export (logits and greedy tokens as ours), evaluation on
fingerprinted tokens, W&B artifacts in the offline run, fine-tuning from a HF Llama, and their bad inputs.
Everything through the real command line."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import cli
from tests.faults.wandb_file import records
from tests.integration.test_bad_input import assert_user_error
from tests.integration.test_train_cli import TINY, ok

pytestmark = pytest.mark.slow
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory) -> dict:
    """W&B's staging and cache dirs in the test's tmp (artifact files are staged there until `wandb sync`)."""
    root = tmp_path_factory.mktemp("wandb-home")
    return {"WANDB_DATA_DIR": str(root / "data"), "WANDB_CACHE_DIR": str(root / "cache"), "WANDB_MODE": "offline"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_cache, wandb_env) -> Path:
    """10 steps of the tiny GPT, W&B offline on, the final checkpoint logged as an artifact."""
    run = tmp_path_factory.mktemp("model-io") / "run"
    ok(cli("trainer.train", *TINY, f"run.dir={run}", f"paths.cache_dir={shared_cache}", "trainer.max_steps=10",
           "logger.wandb=true", "logger.wandb.log_checkpoint=true", env=wandb_env, timeout=400))
    return run


@pytest.fixture(scope="module")
def exported(trained, wandb_env) -> Path:
    proc = ok(cli("trainer.export", f"run.dir={trained}", "format=hf", env=wandb_env))
    hf_dir = trained / "export" / "hf"
    assert f"exported {hf_dir}" in proc.stdout
    return hf_dir


def wandb_records(run: Path, kind: str) -> list:
    out = []
    for f in sorted(run.glob("wandb/offline-run-*/*.wandb")):
        out += [getattr(r, kind) for r in records(f) if r.WhichOneof("record_type") == kind]
    return out


def test_hf_export_is_a_llama_with_our_logits_and_greedy_tokens(trained, exported):
    from trainer.checkpoint.weights import load_trained_net

    names = {p.name for p in exported.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
            "README.md"} <= names
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    c = hf.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.intermediate_size) == (256, 32, 1, 128)
    assert c.tie_word_embeddings and c.rms_norm_eps == 1e-6 and c.rope_parameters["rope_theta"] == 10000.0
    tok = transformers.AutoTokenizer.from_pretrained(str(exported))
    text = "import os\ndef f(x):\n    return x  # é"
    assert tok(text)["input_ids"] == list(text.encode("utf-8"))  # the byte tokenizer, id for id
    assert tok.decode(list(text.encode("utf-8"))) == text

    net, info = load_trained_net(trained)
    assert info.step == 10
    ids = torch.tensor([list(text.encode("utf-8"))[:32], list(b"class A:\n    def __init__(self):\n")[:32]])
    with torch.no_grad():
        diff = (net(ids) - hf(input_ids=ids).logits).abs().max().item()
    print(f"max |logits ours - transformers| = {diff:.3g} (fp32)")
    assert diff <= 1e-5
    prompt = ids[:, :6]
    ours = net.generate(prompt, max_new_tokens=20, temperature=0)
    theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(ours, theirs)

    card = (exported / "README.md").read_text()
    manifest_sha = hashlib.sha256((info.path / "manifest.json").read_bytes()).hexdigest()
    assert manifest_sha in card and "| steps | 10 |" in card and "`stdlib`" in card and "1,280" in card  # 10 x 4 x 32
    provenance = json.loads((exported / "trainer_export.json").read_text())
    assert provenance["step"] == 10 and provenance["checkpoint_manifest_sha256"] == manifest_sha


def test_exports_are_byte_identical_wherever_the_run_lives(trained, exported, tmp_path):
    from safetensors import safe_open

    from trainer.export import export

    copy = tmp_path / "elsewhere"
    shutil.copytree(trained, copy, ignore=shutil.ignore_patterns("export", "wandb*"))
    export(copy, format="hf", wandb=False)  # the command line's own function, in this process
    export(copy)
    export(trained)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (copy / "export" / "hf" / name).read_bytes() == (exported / name).read_bytes(), name
    a, b = trained / "export" / "model.safetensors", copy / "export" / "model.safetensors"
    assert a.read_bytes() == b.read_bytes()
    for f in (a, exported / "model.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            assert st.metadata() == {"format": "pt"}
        assert str(trained).encode() not in f.read_bytes()


def test_checkpoint_and_export_are_w_and_b_artifacts_of_the_run(trained, exported, wandb_env):
    wandb_id = (trained / "wandb_id.txt").read_text().strip()
    # the model artifacts (the data check's W&B table is an artifact of type run_table)
    artifacts = [a for a in wandb_records(trained, "artifact") if a.type == "model"]
    by_kind = {json.loads(a.metadata)["kind"]: a for a in artifacts}
    assert set(by_kind) == {"checkpoint", "export"}, [a.name for a in artifacts]
    for kind, art in by_kind.items():
        assert art.name == f"model-{wandb_id}" and art.type == "model" and art.run_id == wandb_id
        assert {"latest", "best", "step-10"} <= set(art.aliases), (kind, list(art.aliases))
        files = {e.path: e for e in art.manifest.contents}
        for e in files.values():  # staged copies that `wandb sync` uploads
            assert Path(e.local_path).is_file() and Path(e.local_path).stat().st_size == e.size, e.path
        expected = {"state.ckpt", "manifest.json"} if kind == "checkpoint" else {"model.safetensors", "config.json", "README.md"}
        assert expected <= set(files), (kind, sorted(files))
    summary_val = json.loads((trained / "manifest.json").read_text())["summary"]["final_val_loss"]
    for art in by_kind.values():  # `best` is chosen by this validation loss
        meta = json.loads(art.metadata)
        assert meta["step"] == 10 and meta["val_loss"] == pytest.approx(summary_val), meta
    # every offline run dir of the run dir is the same W&B run
    assert {p.name.rsplit("-", 1)[1] for p in (trained / "wandb").glob("offline-run-*")} == {wandb_id}


def test_evaluate_reports_loss_perplexity_bits_per_byte_deterministically(trained, shared_cache, wandb_env):
    from trainer.checkpoint.weights import load_trained_net
    from trainer.data.shards import Shards

    args = ("trainer.evaluate", f"run.dir={trained}", "max_tokens=1000", "batch_size=4", "name=quick")
    first = ok(cli(*args, env=wandb_env))
    result = json.loads((trained / "eval" / "quick.json").read_text())
    assert "eval quick: loss" in first.stdout and "eval val" in first.stderr  # the line, and the progress bar
    from trainer.evaluate import evaluate, held_out_tokens

    again = evaluate(trained, held_out_tokens(trained, "val", max_tokens=1000), batch_size=3)  # the API, other batches
    assert again["tokens_fingerprint"] == result["tokens_fingerprint"] and again["tokens"] == result["tokens"] == 999
    assert abs(again["loss"] - result["loss"]) < 1e-6, (result["loss"], again["loss"])
    ok(cli(*args, env=wandb_env))
    assert json.loads((trained / "eval" / "quick.json").read_text())["loss"] == result["loss"]  # deterministic

    # the same number computed here, independently: one window per 32 tokens over the first 1000 val tokens
    net, _ = load_trained_net(trained)
    shard_dir = json.loads((trained / "manifest.json").read_text())["data"]["shard_dir"]
    ids = torch.from_numpy(np.asarray(Shards.open(Path(shard_dir)).tokens("val")[:1000], dtype=np.int64))
    nll = 0.0
    with torch.no_grad():
        for s in range(0, 999, 32):
            x, y = ids[s : min(s + 32, 999)], ids[s + 1 : min(s + 33, 1000)]
            nll += torch.nn.functional.cross_entropy(net(x[None])[0], y, reduction="sum").item()
    assert result["loss"] == pytest.approx(nll / 999, abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-9)
    assert result["bytes"] == 999 and result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2))  # bytes
    assert result["checkpoint_step"] == 10 and result["split"] == "val" and result["own_data"] is True

    summaries = {}
    for s in wandb_records(trained, "summary"):
        for item in s.update:
            summaries[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    key = "eval/quick/loss"
    assert key in summaries or "eval" in summaries, sorted(summaries)[:20]
    logged = summaries.get(key, (summaries.get("eval") or {}).get("quick", {}).get("loss"))
    assert logged == pytest.approx(result["loss"])


def test_a_run_and_its_hf_export_score_the_same_on_the_same_tokens(trained, exported):
    from trainer.evaluate import evaluate, held_out_tokens

    tokens = held_out_tokens(trained, split="val", max_tokens=600)
    ours = evaluate(trained, tokens, batch_size=4)
    theirs = evaluate(exported, tokens, batch_size=4)
    assert ours["tokens_fingerprint"] == theirs["tokens_fingerprint"] == tokens.fingerprint
    assert theirs["checkpoint_step"] == ours["checkpoint_step"] == 10
    assert abs(ours["loss"] - theirs["loss"]) < 1e-6, (ours["loss"], theirs["loss"])


def test_evaluate_on_another_dataset_and_refuse_another_tokenizer(trained, tmp_path, wandb_env):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"Document {i}: the quick brown fox jumps over the lazy dog. " * 12)
    proc = ok(cli("trainer.evaluate", f"run.dir={trained}", "data=text", f"data.path={corpus}", "data.tokenizer=byte",
                  "data.val_fraction=0.25", env=wandb_env))
    result = json.loads((trained / "eval" / "val-other.json").read_text())
    assert result["own_data"] is False and result["data"]["data_path"] == str(corpus) and "val-other" in proc.stdout
    assert result["tokens"] > 500 and math.isfinite(result["loss"])
    refused = cli("trainer.evaluate", f"run.dir={trained}", "data=text", f"data.path={corpus}", "data.bpe_vocab_size=400",
                  "data.val_fraction=0.25", "name=bpe", env=wandb_env)
    assert_user_error(refused, "another tokenizer", "data.tokenizer")
    assert not (trained / "eval" / "bpe.json").exists()
    from trainer.errors import UserError
    from trainer.evaluate import held_out_tokens

    with pytest.raises(UserError, match="split='tset' is not a split of this data.*train, val"):
        held_out_tokens(trained, split="tset")
    with pytest.raises(UserError, match="txet.*'text'"):
        held_out_tokens(trained, data_overrides=["data=txet"])


def llama(path: Path, hidden: int) -> Path:
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                   rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)
    torch.manual_seed(7)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path


def test_init_from_a_local_llama_starts_training_from_its_weights(tmp_path, shared_cache):
    from safetensors.torch import load_file

    from trainer.models.gpt import GPT, GPTConfig
    from trainer.models.llama_hf import to_hf_state

    source = llama(tmp_path / "llama", hidden=32)
    run = tmp_path / "run"
    # lr ~ 0: after 2 steps the weights are still the checkpoint's (Adam moves each by about lr per step)
    ok(cli("trainer.train", *TINY, f"run.dir={run}", f"paths.cache_dir={shared_cache}", "trainer.max_steps=2",
           "checkpoint.every_n_steps=2", "optim.lr=1e-9", "scheduler.warmup_steps=0", "optim.weight_decay=0",
           f"model.init_from={source}"))
    state = torch.load(run / "checkpoints" / "step-00000002" / "state.ckpt", map_location="cpu", weights_only=True)
    net = GPT(GPTConfig(vocab_size=256, seq_len=32, d_model=32, n_layers=1, n_heads=2))
    net.load_state_dict({k.removeprefix("net."): v for k, v in state["state_dict"].items()})
    original = load_file(str(source / "model.safetensors"))
    trained = to_hf_state(net.state_dict(), net.cfg)
    assert set(trained) == set(original)
    for name, t in original.items():
        assert (trained[name] - t).abs().max().item() < 1e-6, name
    assert "init_from: " + str(source) in (run / "config.yaml").read_text()


def test_init_from_shape_mismatch_names_the_tensor_and_writes_nothing(tmp_path, shared_cache):
    source = llama(tmp_path / "llama64", hidden=64)
    proc = cli("trainer.train", *TINY, f"paths.runs_dir={tmp_path / 'runs'}", f"paths.cache_dir={shared_cache}",
               f"model.init_from={source}")
    assert_user_error(proc, "model.init_from", "'model.embed_tokens.weight'", "(256, 64)", "(256, 32)")
    assert not (tmp_path / "runs").exists()


def test_export_of_a_run_without_a_checkpoint_is_refused(trained, tmp_path):
    empty = tmp_path / "not-trained"
    empty.mkdir()
    shutil.copy(trained / "config.yaml", empty / "config.yaml")
    shutil.copy(trained / "model.json", empty / "model.json")
    for fmt in ("hf", "safetensors"):
        assert_user_error(cli("trainer.export", f"run.dir={empty}", f"format={fmt}"), "no valid checkpoint", str(empty))
    assert sorted(p.name for p in empty.iterdir()) == ["config.yaml", "model.json"]  # nothing written
    assert_user_error(cli("trainer.export", f"run.dir={trained}", "format=gguf"), "format='gguf'", "hf")


TASK_DOCS = [
    {"context": "import", "choices": ["os", "banana split", "(", "sys"], "label": 0},
    {"context": "def main(", "choices": ["):", "argv):", "zzz", "self"], "label": 1},
    {"context": "    return", "choices": [" x", "None", "\n", "qq"], "label": 2},
    {"context": "for i in", "choices": ["range(n):", "x:", "!!", "in"], "label": 0},
    {"context": "class A", "choices": [":", "(object):", "B", "zz"], "label": 1},
    {"context": "if x ==", "choices": ["0:", "None:", "y", "\t"], "label": 3},
]


def test_lm_eval_tasks_run_in_process_on_the_export(trained, exported, tmp_path, wandb_env):
    pytest.importorskip("lm_eval")
    from trainer.checkpoint.weights import load_trained_net

    data = tmp_path / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in TASK_DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    proc = ok(cli("trainer.evaluate", f"run.dir={trained}", "max_tokens=200", "name=harness", "tasks=[tiny_mc]",
                  f"task_dir={tasks}", env=wandb_env, timeout=600))
    got = json.loads((trained / "eval" / "harness.json").read_text())["tasks"]["tiny_mc"]
    assert "task tiny_mc:" in proc.stdout

    # The same scores from our own net: log-likelihood of " " + choice after the context (bytes = tokens)
    net, _ = load_trained_net(trained)
    acc = acc_norm = 0
    for doc in TASK_DOCS:
        lls = []
        for choice in doc["choices"]:
            ctx, cont = list(doc["context"].encode()), list((" " + choice).encode())
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(net(ids[:, :-1])[0], dim=-1)
            lls.append(sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)))
        acc += int(np.argmax(lls) == doc["label"])
        acc_norm += int(np.argmax([ll / len(c) for ll, c in zip(lls, doc["choices"])]) == doc["label"])  # per character
    assert got["acc,none"] == pytest.approx(acc / len(TASK_DOCS)), (got, acc)
    assert got["acc_norm,none"] == pytest.approx(acc_norm / len(TASK_DOCS)), (got, acc_norm)


def test_a_bpe_run_with_a_padded_embedding_exports_its_true_vocabulary(tmp_path, shared_cache):
    """A trained BPE (vocab 300, embedding padded to 320): the export keeps 300 rows, scores as the run does."""
    from trainer.checkpoint.weights import load_trained_net
    from trainer.evaluate import evaluate, held_out_tokens
    from trainer.export import export

    run = tmp_path / "bpe"
    ok(cli("trainer.train", *TINY, f"run.dir={run}", f"paths.cache_dir={shared_cache}", "trainer.max_steps=3",
           "data.tokenizer=bpe", "data.bpe_vocab_size=330"))
    net, _ = load_trained_net(run)
    assert net.cfg.vocab_size == 330 and net.embed.weight.shape[0] == 384
    hf_dir = export(run, format="hf", wandb=False)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    assert hf.config.vocab_size == 330 and hf.model.embed_tokens.weight.shape == (330, 32)
    tok = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    assert tok.eos_token == "<|endoftext|>" and hf.config.eos_token_id == tok.eos_token_id
    tokens = held_out_tokens(run, "val", max_tokens=400)
    ids = torch.from_numpy(np.asarray(tokens.ids[:384], dtype=np.int64)).view(12, 32)
    with torch.no_grad():
        assert (net(ids) - hf(input_ids=ids).logits).abs().max().item() <= 1e-5
    ours, theirs = evaluate(run, tokens), evaluate(hf_dir, tokens)
    assert abs(ours["loss"] - theirs["loss"]) < 1e-6
    text = tok.decode(tokens.ids[1:].tolist(), skip_special_tokens=True)
    assert ours["bytes"] == len(text.encode("utf-8")) and ours["bytes"] > ours["tokens"]  # BPE: >1 byte a token
