"""Where the text comes from: the stdlib default, local files, or a Hugging Face dataset.

A source is named by a `SourceSpec` (`data.path` and its neighbours, or one entry of
`data.sources`). `resolve_source` only looks at the filesystem (cheap, done by every rank):
  - `stdlib`, a file, or a plain directory -> `FileSource`: files read by the `datasets`
    builder their suffix names (json/jsonl, parquet, csv; everything else is text, one file per
    document);
  - a hub name, or a local directory that is a dataset repository (a README.md whose header
    declares `configs:`, e.g. a `hf download --repo-type dataset` copy), or any directory given
    with `data.name` / a split other than train -> `DatasetSource`, read by
    `datasets.load_dataset(path, name=..., split=...)`: one code path for both.
`load_documents` gives a Dataset with one document per row in a "text" column; `stream_documents`
gives the same rows lazily (`data.streaming=true`), for sets too large to download whole.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import sysconfig
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from trainer.errors import UserError, closest

STDLIB = "stdlib"
# Files with these suffixes are read by the matching `datasets` builder; everything else is text.
TABLE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_KNOWN_SUFFIXES = {".txt", ".text", ".md", ".rst", ".py", *TABLE_BUILDERS}
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_FORMATS = ".txt/.md/.py/.json/.jsonl/.parquet/.csv"


@dataclass(frozen=True)
class SourceSpec:
    """One corpus as the user named it. The keys of a `data.sources` entry are these fields."""

    path: str
    weight: float = 1.0  # its share of the training samples in a mixture (normalised over the sources)
    name: str | None = None  # the dataset's config (`load_dataset(path, name)`), e.g. sample-10BT
    split: str = "train"  # the dataset split to read; the validation split is carved out of it
    text_field: str = "text"  # the text column of json/jsonl/parquet/csv rows and datasets
    file_glob: str | None = None  # which files of a plain directory (default: all, recursively)
    streaming: bool = False  # read rows lazily instead of downloading the whole split; needs max_tokens
    max_tokens: int | None = None  # token budget: stop after this many tokens (train + validation)

    def where(self, index: int | None) -> str:
        """The config key prefix of this spec, for messages."""
        return "data." if index is None else f"data.sources[{index}]."


SOURCE_KEYS = tuple(f.name for f in fields(SourceSpec))


def source_specs(sources: Any, defaults: dict) -> list[SourceSpec]:
    """The `data.sources` list (entries inherit the other keys from `defaults`), checked."""
    if not isinstance(sources, (list, tuple)) or not sources:
        raise UserError(
            f"data.sources={sources!r} must be a non-empty list like [{{path: A, weight: 0.7}}, {{path: B, weight: 0.3}}]."
        )
    specs = []
    for i, entry in enumerate(sources):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise UserError(f"data.sources[{i}]={entry!r} must be a mapping like {{path: FILE_OR_NAME, weight: 0.5}}.")
        for key in entry:
            if key not in SOURCE_KEYS:
                raise UserError(
                    f"unknown key 'data.sources[{i}].{key}'.{closest(str(key), SOURCE_KEYS)} "
                    f"Valid keys: {', '.join(SOURCE_KEYS)}."
                )
        if not entry.get("path"):
            raise UserError(f"data.sources[{i}] has no path: give each source a path (a file, directory or hub name).")
        specs.append(check_spec(SourceSpec(**{**defaults, "weight": 1.0, **entry}), i))
    return specs


def check_spec(spec: SourceSpec, index: int | None = None) -> SourceSpec:
    at = spec.where(index)
    w = spec.weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
        raise UserError(
            f"{at}weight={w!r} is invalid: a mixture weight must be a positive number (the weights are normalised, "
            "so 0.7 and 0.3, or 7 and 3, mean the same). Remove a source instead of giving it weight 0."
        )
    if spec.max_tokens is not None and (isinstance(spec.max_tokens, bool) or spec.max_tokens < 1):
        raise UserError(f"{at}max_tokens={spec.max_tokens!r} is invalid: it must be a positive number of tokens, or null.")
    if spec.streaming and spec.max_tokens is None:
        raise UserError(
            f"{at}streaming=true needs {at}max_tokens: the token budget to read from the stream "
            f"(e.g. {at}max_tokens=100000000)."
        )
    if not spec.split:
        raise UserError(f"{at}split is empty: name the dataset split to read (e.g. train).")
    return spec


@dataclass(frozen=True)
class FileSource:
    """Local files (absolute paths, sorted), each read by the builder its suffix names."""

    spec: SourceSpec
    files: tuple[Path, ...]
    label: str  # what the user wrote (or stdlib:<dir>), for messages

    def fingerprint(self) -> str:
        """Hash of each file's path, size and mtime: a changed, added or removed file changes it."""
        h = hashlib.sha256(f"local|{self.spec.text_field}".encode())
        for f in self.files:
            st = f.stat()
            h.update(f"|{f}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.label} ({len(self.files)} files)"


@dataclass(frozen=True)
class DatasetSource:
    """A `datasets.load_dataset` path: a hub name, or a local dataset repository directory."""

    spec: SourceSpec
    path: str  # the hub name, or the directory's absolute path
    local: bool

    def describe(self) -> str:
        config = f" ({self.spec.name})" if self.spec.name else ""
        return f"{'' if self.local else 'hub:'}{self.path}{config} [{self.spec.split}]"

    def stream_fingerprint(self) -> str:
        """A stream cannot be hashed without reading it: named by what selects its rows."""
        s = self.spec
        parts = f"stream|{self.path}|{s.name}|{s.split}|{s.text_field}"
        return hashlib.sha256(parts.encode()).hexdigest()[:16]


Source = FileSource | DatasetSource


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def offline_reason(variables: tuple[str, ...] = _OFFLINE_VARS) -> str | None:
    """The environment variable that puts HF offline, if one is set."""
    for var in variables:
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return var
    return None


def resolve_source(spec: SourceSpec, index: int | None = None) -> Source:
    """Turn a spec's path into a source. Raises UserError for a path that cannot be used."""
    at, path = spec.where(index), spec.path
    if path == STDLIB:
        root = stdlib_dir()
        return _files(spec, index, f"stdlib:{root}", _glob(root, spec.file_glob or "*.py"))
    p = Path(path).expanduser()
    if p.is_dir() and (spec.name is not None or spec.split != "train" or _is_dataset_repo(p)):
        return DatasetSource(spec, str(p.resolve()), local=True)
    if spec.name is not None or spec.split != "train":
        if p.is_file():
            raise UserError(
                f"{at}path={path!r} is a file: {at}name and {at}split select a config and split of a dataset "
                f"(a hub name or a dataset repository directory). Leave them unset for a file."
            )
    if p.is_file():
        return _files(spec, index, path, [p.resolve()])
    if p.is_dir():
        files = _glob(p, spec.file_glob or "**/*")
        if not files:
            raise UserError(
                f"{at}path={path!r} is a directory with no files"
                + (f" matching {at}file_glob={spec.file_glob!r}" if spec.file_glob else "")
                + f". Point {at}path at a directory of {_FORMATS} files."
            )
        return _files(spec, index, path, files)
    if _HUB_NAME.match(path) and Path(path).suffix not in _KNOWN_SUFFIXES:
        return DatasetSource(spec, path, local=False)
    raise UserError(
        f"{at}path={path!r} does not exist (relative paths are resolved from {Path.cwd()}). Point {at}path at "
        f"a {_FORMATS} file or a directory of them, a Hugging Face dataset name, or use data.path={STDLIB} for the "
        "default corpus."
    )


def reads_text_field(spec: SourceSpec) -> bool:
    """Whether text_field selects a column of this source: a dataset's rows, or json/jsonl/parquet/csv files
    (other files are one document each). A path that cannot be resolved here any more: True (it may)."""
    try:
        source = resolve_source(spec)
    except UserError:
        return True
    return isinstance(source, DatasetSource) or any(f.suffix in TABLE_BUILDERS for f in source.files)


def _files(spec: SourceSpec, index: int | None, label: str, files: list[Path]) -> FileSource:
    return FileSource(spec, _text_files(files, f"{spec.where(index)}path={spec.path!r}"), label)


def _is_dataset_repo(directory: Path) -> bool:
    """A dataset repository declares its configs (data files, splits) in the YAML header of its README.md."""
    readme = directory / "README.md"
    if not readme.is_file():
        return False
    text = readme.read_text(errors="replace")
    if not text.startswith("---"):
        return False
    header = text[3:].split("\n---", 1)[0]
    return re.search(r"^(configs|dataset_info):", header, re.MULTILINE) is not None


def _glob(root: Path, pattern: str) -> list[Path]:
    hidden = lambda f: any(part.startswith(".") for part in f.relative_to(root).parts)  # noqa: E731
    return sorted(f.resolve() for f in root.glob(pattern) if f.is_file() and not hidden(f))


def _looks_binary(f: Path) -> bool:
    """git's heuristic: a NUL byte in the first 8 KiB means binary."""
    with open(f, "rb") as fh:
        return b"\0" in fh.read(8192)


def _text_files(files: list[Path], where: str) -> tuple[Path, ...]:
    """Keep the non-empty files that can hold text (tables by suffix, others if not binary)."""
    kept = [
        f for f in files
        if f.stat().st_size > 0 and (f.suffix in TABLE_BUILDERS or not _looks_binary(f))
    ]
    if not kept:
        raise UserError(
            f"{where} has no text: its {len(files)} file(s) are empty or binary. Point it at {_FORMATS} files "
            "(or narrow the selection with data.file_glob)."
        )
    return tuple(kept)


# --- reading -------------------------------------------------------------------------------------


def load_documents(source: Source, hf_cache_dir: str | None, index: int | None = None):
    """A `datasets.Dataset` with one document per row in a "text" column."""
    import datasets  # imported here: reusing built shards never needs it

    if isinstance(source, DatasetSource):
        ds = _load_dataset(source, hf_cache_dir, index, streaming=False)
        return _text_column(ds, source.spec.text_field, source.describe(), source.spec.where(index))
    parts = []
    for builder, files, options in _builders(source):
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=hf_cache_dir, **options)
        except Exception as e:  # malformed json/parquet/csv surfaces as one of several datasets errors
            raise _unreadable(source, builder, e, index) from e
        parts.append(ds if builder == "text" else _text_column(ds, source.spec.text_field, files[0], source.spec.where(index)))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def stream_documents(source: Source, hf_cache_dir: str | None, index: int | None = None, batch_size: int = 1000
                     ) -> Iterator[list[str]]:
    """Batches of document texts, read lazily (`datasets` streaming), in the source's order."""
    import datasets

    at = source.spec.where(index)
    if isinstance(source, DatasetSource):
        streams = [(source.describe(), _load_dataset(source, hf_cache_dir, index, streaming=True), source.spec.text_field)]
    else:
        streams = []
        for builder, files, options in _builders(source):
            try:
                ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **options)
            except Exception as e:
                raise _unreadable(source, builder, e, index) from e
            streams.append((files[0], ds, "text" if builder == "text" else source.spec.text_field))
    for where, ds, field in streams:
        first = True
        for batch in ds.iter(batch_size=batch_size):
            if first and field not in batch:
                raise _missing_column(field, where, list(batch), at)
            first = False
            yield [t or "" for t in batch[field]]


def _builders(source: FileSource) -> list[tuple[str, list[str], dict]]:
    by_builder: dict[str, list[str]] = {}
    for f in source.files:
        by_builder.setdefault(TABLE_BUILDERS.get(f.suffix, "text"), []).append(str(f))
    # Plain text: one row per file (a document), bytes kept exactly; undecodable bytes become U+FFFD.
    text_options = dict(sample_by="document", keep_linebreaks=True, encoding_errors="replace")
    return [(b, files, text_options if b == "text" else {}) for b, files in by_builder.items()]


def _load_dataset(source: DatasetSource, hf_cache_dir: str | None, index: int | None, streaming: bool):
    import datasets

    spec, at = source.spec, source.spec.where(index)
    reason = None if source.local else offline_reason()
    if reason and not datasets.config.HF_HUB_OFFLINE:
        # `datasets` read its offline setting at import, before this variable was set: it would still go
        # to the network, so stop here.
        raise _offline_error(source, reason, at)
    try:  # offline, `datasets` serves a hub dataset from its cache if it was downloaded before
        return datasets.load_dataset(source.path, name=spec.name, split=spec.split, cache_dir=hf_cache_dir,
                                     streaming=streaming)
    except Exception as e:  # the hub's errors are many (network, auth, not found, bad config/split)
        if reason:
            raise _offline_error(source, reason, at) from e
        where = "the local dataset" if source.local else "the Hugging Face hub"
        raise UserError(
            f"{at}path={spec.path!r}"
            + (f" {at}name={spec.name!r}" if spec.name else "")
            + f" {at}split={spec.split!r}: could not load it from {where} ({type(e).__name__}: {first_line(e)}). "
            f"Check the name, {at}name (the dataset config) and {at}split"
            + ("." if source.local else ", and the network; or download it and point the path at the local copy.")
        ) from e


def _offline_error(source: DatasetSource, reason: str, at: str) -> UserError:
    spec = source.spec
    selected = (("name", spec.name), ("split", spec.split if spec.split != "train" else None))
    keep = "".join(f" {at}{k}={v}" for k, v in selected if v)  # the copy is selected the same way
    return UserError(
        f"{at}path={spec.path!r} is not a local file or directory (looked in {Path.cwd()}), and it cannot be fetched "
        f"as a Hugging Face hub dataset because {reason}={os.environ[reason]} (offline) and it is not in the local "
        f"datasets cache. To use a local copy: on a machine with network run `hf download {spec.path} "
        f"--repo-type dataset --local-dir DIR` (add --include 'PATTERN' for one config's files), copy DIR here and "
        f"set {at}path=DIR{keep}; or, with network, unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE to download it."
    )


def _unreadable(source: FileSource, builder: str, e: Exception, index: int | None) -> UserError:
    at = source.spec.where(index)
    return UserError(
        f"{at}path={source.spec.path!r}: could not read its {builder} files ({type(e).__name__}: {first_line(e)}). "
        f"Fix or remove the malformed files, or select others with {at}file_glob."
    )


def _missing_column(field: str, where: str, columns: list[str], at: str) -> UserError:
    return UserError(
        f"{at}text_field={field!r} is not a column of {where} (columns: {', '.join(map(str, columns))})."
        f"{closest(field, [str(c) for c in columns])} Set {at}text_field to the column that holds the text."
    )


def _text_column(ds, text_field: str, where: str, at: str = "data."):
    """Keep only the text column, named "text"."""
    import datasets

    if text_field not in ds.column_names:
        raise _missing_column(text_field, where, ds.column_names, at)
    feature = ds.features[text_field]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise UserError(
            f"{at}text_field={text_field!r} in {where} holds {feature}, not text. "
            f"Set {at}text_field to a string column."
        )
    ds = ds.select_columns([text_field])
    return ds.rename_column(text_field, "text") if text_field != "text" else ds


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:300]


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
