"""How closely a run's Hugging Face export reproduces the run's own model, in fp32 on this machine.

    PYTHONPATH=. python scripts/hf_export_check.py RUN_DIR [--windows 16] [--out docs/model_io.json]

Exports RUN_DIR format=hf (W&B off) to a temporary directory, loads it with
transformers.AutoModelForCausalLM, and prints one JSON object: the max |logits ours - transformers|
over `windows` full-context windows of the run's validation tokens, whether greedy generation
(up to 64 new tokens within the context, from 8 prompts) is token-for-token identical, and both models' evaluation loss on
the same first 200k validation tokens. The test (tests/integration/test_model_io.py) asserts the
same properties on a tiny 10-step model; this measures a real run.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import transformers

    from trainer.checkpoint.weights import load_trained_net
    from trainer.evaluate import evaluate, held_out_tokens
    from trainer.export import export

    torch.manual_seed(0)
    net, info = load_trained_net(args.run_dir)
    net = net.float().eval()
    T = net.cfg.seq_len
    tokens = held_out_tokens(args.run_dir, "val", max_tokens=args.windows * T)
    ids = torch.from_numpy(np.asarray(tokens.ids[: args.windows * T], dtype=np.int64)).view(args.windows, T)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = export(args.run_dir, format="hf", out=Path(tmp) / "hf", wandb=False)
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
        with torch.no_grad():
            ours, theirs = net(ids), hf(input_ids=ids).logits
        diff = (ours - theirs).abs()
        prompts = ids[:8, :16]
        new = min(64, T - 16)  # within the context: past it ours slides its window, transformers does not
        greedy_ours = net.generate(prompts, max_new_tokens=new, temperature=0)
        greedy_theirs = hf.generate(prompts, max_new_tokens=new, do_sample=False, attention_mask=torch.ones_like(prompts))
        eval_tokens = held_out_tokens(args.run_dir, "val", max_tokens=200_000)
        eval_ours, eval_theirs = evaluate(args.run_dir, eval_tokens), evaluate(hf_dir, eval_tokens)
    result = {
        "run_dir": str(args.run_dir), "checkpoint_step": info.step, "dtype": "float32", "device": "cpu",
        "windows": args.windows, "seq_len": T, "vocab_size": net.cfg.vocab_size,
        "max_abs_logit_diff": diff.max().item(), "mean_abs_logit_diff": diff.mean().item(),
        "max_abs_logit": ours.abs().max().item(),
        "greedy_identical": bool(torch.equal(greedy_ours, greedy_theirs)), "greedy_new_tokens": new, "greedy_prompts": 8,
        "eval_tokens": eval_ours["tokens"], "eval_loss_ours": eval_ours["loss"], "eval_loss_hf": eval_theirs["loss"],
        "torch": torch.__version__, "transformers": transformers.__version__, "machine": _cpu_name(),
        "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    main()
