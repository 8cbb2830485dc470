"""Where the text comes from: the stdlib default, local files, or a Hugging Face hub dataset.

`resolve_source` only looks at the filesystem (cheap, done by every rank); `load_documents`
reads the source through HF `datasets.load_dataset` (done once, by the shard builder) into a
Dataset with one document per row in a "text" column: one file per document for plain text,
one row per document for json/jsonl/parquet.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import UserError

STDLIB = "stdlib"
# Files with these suffixes are read by the matching `datasets` builder; everything else is text.
TABLE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_KNOWN_SUFFIXES = {".txt", ".text", ".md", ".rst", ".py", ".csv", *TABLE_BUILDERS}
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class LocalSource:
    """Local files (absolute paths, sorted), each read by the builder its suffix names."""

    spec: str  # what the user wrote, for messages
    files: tuple[Path, ...]
    text_field: str

    def fingerprint(self) -> str:
        """Hash of each file's path, size and mtime: a changed, added or removed file changes it."""
        h = hashlib.sha256(f"local|{self.text_field}".encode())
        for f in self.files:
            st = f.stat()
            h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.spec} ({len(self.files)} files)"


@dataclass(frozen=True)
class HubSource:
    """A dataset name on the Hugging Face hub (needs the network)."""

    name: str
    text_field: str

    def describe(self) -> str:
        return f"hub:{self.name}"


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def offline_reason() -> str | None:
    """The environment variable that puts HF offline, if one is set."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return var
    return None


def resolve_source(path: str, file_glob: str | None, text_field: str) -> LocalSource | HubSource:
    """Turn `data.path` into a source. Raises UserError for a path that cannot be used."""
    if path == STDLIB:
        root = stdlib_dir()
        return LocalSource(f"stdlib:{root}", _text_files(_glob(root, file_glob or "*.py"), path), text_field)
    p = Path(path).expanduser()
    if p.is_file():
        return LocalSource(path, _text_files([p.resolve()], path), text_field)
    if p.is_dir():
        files = _glob(p, file_glob or "**/*")
        if not files:
            raise UserError(
                f"data.path={path!r} is a directory with no files"
                + (f" matching data.file_glob={file_glob!r}" if file_glob else "")
                + ". Point data.path at a directory of .txt/.md/.py/.json/.jsonl/.parquet files."
            )
        return LocalSource(path, _text_files(files, path), text_field)
    if _HUB_NAME.match(path) and Path(path).suffix not in _KNOWN_SUFFIXES:
        return HubSource(path, text_field)
    raise UserError(
        f"data.path={path!r} does not exist (relative paths are resolved from {Path.cwd()}). Point data.path at "
        f"a text/json/jsonl/parquet file or a directory of them, or use data.path={STDLIB} for the default corpus."
    )


def _glob(root: Path, pattern: str) -> list[Path]:
    hidden = lambda f: any(part.startswith(".") for part in f.relative_to(root).parts)  # noqa: E731
    return sorted(f.resolve() for f in root.glob(pattern) if f.is_file() and not hidden(f))


def _looks_binary(f: Path) -> bool:
    """git's heuristic: a NUL byte in the first 8 KiB means binary."""
    with open(f, "rb") as fh:
        return b"\0" in fh.read(8192)


def _text_files(files: list[Path], spec: str) -> tuple[Path, ...]:
    """Keep the non-empty files that can hold text (tables by suffix, others if not binary)."""
    kept = [
        f for f in files
        if f.stat().st_size > 0 and (f.suffix in TABLE_BUILDERS or not _looks_binary(f))
    ]
    if not kept:
        raise UserError(
            f"data.path={spec!r} has no text: its {len(files)} file(s) are empty or binary. Point data.path at "
            ".txt/.md/.py/.json/.jsonl/.parquet files (or narrow the selection with data.file_glob)."
        )
    return tuple(kept)


def load_documents(source: LocalSource | HubSource, hf_cache_dir: str | None):
    """A `datasets.Dataset` with one document per row in a "text" column."""
    import datasets  # imported here: reusing built shards never needs it

    if isinstance(source, HubSource):
        reason = offline_reason()
        if reason and not datasets.config.HF_HUB_OFFLINE:
            # `datasets` read its offline setting at import, before this variable was set: it would still go
            # to the network, so stop here.
            raise _offline_error(source.name, reason)
        try:  # offline, `datasets` serves a hub dataset from its cache if it was downloaded before
            ds = datasets.load_dataset(source.name, split="train", cache_dir=hf_cache_dir)
        except Exception as e:  # the hub's errors are many (network, auth, not found); all mean the same to the user
            if reason:
                raise _offline_error(source.name, reason) from e
            raise UserError(
                f"data.path={source.name!r}: could not load it from the Hugging Face hub ({type(e).__name__}: {e}). "
                "Check the name and the network, or download it and point data.path at the local files."
            ) from e
        return _text_column(ds, source.text_field, source.name)

    by_builder: dict[str, list[str]] = {}
    for f in source.files:
        by_builder.setdefault(TABLE_BUILDERS.get(f.suffix, "text"), []).append(str(f))
    parts = []
    for builder, files in by_builder.items():
        # Plain text: one row per file (a document), bytes kept exactly; undecodable bytes become U+FFFD.
        options = dict(sample_by="document", keep_linebreaks=True, encoding_errors="replace") if builder == "text" else {}
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=hf_cache_dir, **options)
        except Exception as e:  # malformed json/parquet surfaces as one of several datasets errors
            raise UserError(
                f"data.path={source.spec!r}: could not read its {builder} files ({type(e).__name__}: {e}). "
                "Fix or remove the malformed files, or select others with data.file_glob."
            ) from e
        parts.append(ds if builder == "text" else _text_column(ds, source.text_field, files[0]))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _offline_error(name: str, reason: str) -> UserError:
    return UserError(
        f"data.path={name!r} is not a local file or directory (looked in {Path.cwd()}), and it cannot be fetched "
        f"as a Hugging Face hub dataset because {reason}={os.environ[reason]} (offline) and it is not in the local "
        f"datasets cache. Download it on a machine with network and point data.path at the local files, or unset "
        f"{reason}."
    )


def _text_column(ds, text_field: str, where: str):
    """Keep only the text column, named "text"."""
    import datasets

    if text_field not in ds.column_names:
        raise UserError(
            f"data.text_field={text_field!r} is not a column of {where} (columns: {', '.join(ds.column_names)}). "
            "Set data.text_field to the column that holds the text."
        )
    feature = ds.features[text_field]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise UserError(
            f"data.text_field={text_field!r} in {where} holds {feature}, not text. "
            "Set data.text_field to a string column."
        )
    ds = ds.select_columns([text_field])
    return ds.rename_column(text_field, "text") if text_field != "text" else ds


@contextlib.contextmanager
def quiet_datasets():
    """No per-step progress bars from `datasets` in the training log; restored afterwards."""
    import datasets
    from datasets.utils import logging as ds_logging

    was_enabled = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    verbosity = ds_logging.get_verbosity()
    ds_logging.set_verbosity_error()
    try:
        yield
    finally:
        ds_logging.set_verbosity(verbosity)
        if was_enabled:
            datasets.enable_progress_bars()
