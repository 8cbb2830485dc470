"""python -m trainer.export run.dir=PATH [format=safetensors|hf] [checkpoint=DIR] [out=DIR] [wandb=true|false]"""
from __future__ import annotations

import sys
from pathlib import Path

from trainer.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> None:
    from trainer.cli_args import existing_run_dir, parse_bool, parse_kv
    from trainer.export import export

    with exit_on_user_error():
        args = parse_kv(sys.argv[1:] if argv is None else argv,
                        {"run.dir": existing_run_dir, "checkpoint": Path, "format": str, "out": Path, "wandb": parse_bool},
                        ("run.dir",))
        path = export(args["run.dir"], args.get("checkpoint"), format=args.get("format", "safetensors"),
                      out=args.get("out"), wandb=args.get("wandb", True))
        print(f"exported {path}")


if __name__ == "__main__":
    main()
