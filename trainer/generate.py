"""Sample text from a run's newest valid checkpoint: a human's sanity check.

    python -m trainer.generate run.dir=PATH [prompt="def "] [tokens=200] [temperature=0.8] [top_k=50] [seed=0]

temperature=0 is greedy decoding (what `transformers`' generate(do_sample=False) gives on the HF export).
"""
from __future__ import annotations

import sys

from trainer.errors import UserError, exit_on_user_error


def generate(run_dir, prompt: str, tokens: int, temperature: float, top_k: int, seed: int) -> str:
    import torch
    from hydra.utils import instantiate

    from trainer.checkpoint.weights import load_trained_net
    from trainer.tracking.run_dir import RunDir, load_frozen

    cfg = load_frozen(RunDir(run_dir).config)
    net, _ = load_trained_net(run_dir)
    if not hasattr(net, "generate"):
        raise UserError(f"{type(net).__name__} is not a language model (it has no generate method)")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # reuses the cached shards and tokenizer
    ids = datamodule.encode(prompt) or [0]
    torch.manual_seed(seed)
    out = net.generate(torch.tensor([ids], dtype=torch.long), max_new_tokens=tokens, temperature=temperature, top_k=top_k)
    return datamodule.decode(out[0].tolist())


def main(argv: list[str] | None = None) -> None:
    from trainer.cli_args import existing_run_dir, parse_kv

    with exit_on_user_error():
        args = parse_kv(
            sys.argv[1:] if argv is None else argv,
            {"run.dir": existing_run_dir, "prompt": str, "tokens": int, "temperature": float, "top_k": int, "seed": int},
            ("run.dir",),
        )
        text = generate(args["run.dir"], args.get("prompt", "def "), args.get("tokens", 200),
                        args.get("temperature", 0.8), args.get("top_k", 50), args.get("seed", 0))
        print(text)


if __name__ == "__main__":
    main()
