"""Print the pinned set (requirements/constraints.txt) adapted to the Python that runs this: every package
this interpreter already has keeps its installed version, the pins fill in the rest.

The image's base decides what is already there: the NGC PyTorch image brings its own torch (a build
against its CUDA, cuDNN and NCCL), numpy and more, pinned by NGC's own /etc/pip/constraint.txt, and a
pin of ours must not fight them; the plain Debian base brings nothing, so every pin applies.

    python3 scripts/base_constraints.py requirements/constraints.txt > /tmp/constraints.txt
"""
from __future__ import annotations

import re
import sys
from importlib import metadata


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(path: str) -> None:
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name = canonical(line.split("==", 1)[0])
        print(f"{name}=={installed[name]}" if name in installed else line)


if __name__ == "__main__":
    main(sys.argv[1])
