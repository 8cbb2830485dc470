"""Corpora with known problems planted in them, written as real files."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

VOCAB = [f"w{i}" for i in range(5000)]  # random 600-word documents: any two share no 13-word shingle


def random_doc(rng: random.Random, n_words: int = 600) -> str:
    lines, words = [], [rng.choice(VOCAB) for _ in range(n_words)]
    for i in range(0, n_words, 12):
        lines.append(" ".join(words[i:i + 12]))
    return "\n".join(lines) + "\n"


def near_copy(text: str, rng: random.Random) -> str:
    """One word replaced: Jaccard over 13-word shingles ~0.96, well above 0.8."""
    words = text.split(" ")
    i = rng.randrange(len(words) // 4, 3 * len(words) // 4)
    words[i] = "changed"
    return " ".join(words)


@dataclass
class Planted:
    root: Path
    names: list[str] = field(default_factory=list)  # every document, sorted as the reader sorts files
    whitespace: set[str] = field(default_factory=set)
    undecodable: set[str] = field(default_factory=set)
    exact: list[set[str]] = field(default_factory=list)  # groups of identical documents
    near: list[tuple[str, str]] = field(default_factory=list)  # (original, near copy)


def planted_corpus(root: Path, n_clean: int = 40, seed: int = 0) -> Planted:
    """n_clean random documents plus 2 whitespace-only, 1 undecodable, 2 exact copies (one of them twice) and
    6 near copies; file names sort in creation order."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    p = Planted(root)
    texts: dict[str, bytes] = {}

    def add(kind: str, data: bytes) -> str:
        name = f"{len(texts):03d}_{kind}.txt"
        texts[name] = data
        return name

    clean = [add("clean", random_doc(rng).encode()) for _ in range(n_clean)]
    p.whitespace |= {add("ws", b"   \n\t \n"), add("ws", b"\n\n\n")}
    p.undecodable.add(add("bad", b"caf\xe9 \xff\xfe " + random_doc(rng).encode()))
    a = add("copy", texts[clean[0]])
    b = add("copy", texts[clean[1]])
    c = add("copy", texts[clean[1]])
    p.exact = [{clean[0], a}, {clean[1], b, c}]
    for src in clean[2:8]:
        p.near.append((src, add("near", near_copy(texts[src].decode(), rng).encode())))
    for name, data in texts.items():
        (root / name).write_bytes(data)
    p.names = sorted(texts)
    return p


def stdlib_paragraphs() -> list[str]:
    """This interpreter's stdlib sources cut at blank lines: ~18k real documents (code, comments, docstrings)."""
    import re
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for f in sorted(root.glob("*.py")) for p in re.split(r"\n\s*\n", f.read_text(errors="replace")) if p.strip()]


def prose_paragraphs() -> list[str]:
    """English prose every Python has: the language reference topics behind help() (pydoc_data)."""
    import re

    from pydoc_data.topics import topics

    return [p for text in topics.values() for p in re.split(r"\n\s*\n", text) if p.strip()]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path
