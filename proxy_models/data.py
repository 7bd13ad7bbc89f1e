"""The byte-level corpus: built from text already on the machine, cached as a memory map.

The default corpus is the Python standard library's own sources and text files,
which every Python installation carries, so nothing is downloaded. Any folder of
text files works too. Files are split into train and validation *by file*, by a
hash of their relative path, so the split is the same on every machine that has
the same files and does not move when files are added elsewhere.

Cache layout: ``$SCALESEARCH_CACHE`` (default ``~/.cache/scalesearch``)
``/corpus/<key>/{train,val}.bin`` plus ``meta.json``; ``key`` hashes the source
folder's file list, sizes and mtimes, so an edited folder is rebuilt. Files are
written to a temporary name and renamed, so a crash never leaves a torn cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import sysconfig

import numpy as np

TEXT_SUFFIXES = (".py", ".txt", ".rst", ".md", ".toml", ".cfg", ".ini", ".json", ".html", ".xml", ".csv", ".tex", "")
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", ".git", ".venv", "node_modules"}
VAL_FRACTION = 0.05
CORPUS_VERSION = 1


class CorpusError(ValueError):
    """The corpus folder cannot be used; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Attributes:
    train: uint8 bytes of the training files, concatenated (a read-only memmap).
    val: uint8 bytes of the validation files.
    source: the folder the text came from.
    n_files: (train files, validation files).
    """

    train: np.ndarray
    val: np.ndarray
    source: str
    n_files: tuple[int, int]


def default_source() -> pathlib.Path:
    """The Python standard library's folder: text that every Python carries."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SCALESEARCH_CACHE", pathlib.Path.home() / ".cache" / "scalesearch"))


def _text_files(root: pathlib.Path) -> list[pathlib.Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if pathlib.Path(name).suffix.lower() in TEXT_SUFFIXES and not name.startswith("."):
                files.append(pathlib.Path(dirpath) / name)
    return files


def _is_text(data: bytes) -> bool:
    """Text here means: no NUL byte and valid UTF-8 (what a byte LM should learn from)."""
    if not data or b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def is_validation(relpath: str, fraction: float = VAL_FRACTION) -> bool:
    """Deterministic file-level split by a hash of the relative path."""
    digest = hashlib.sha1(relpath.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def _cache_key(root: pathlib.Path, files: list[pathlib.Path]) -> str:
    h = hashlib.sha256(f"v{CORPUS_VERSION}:{root.resolve()}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _build(root: pathlib.Path, files: list[pathlib.Path], out: pathlib.Path) -> dict:
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    for f in files:
        data = f.read_bytes()
        if _is_text(data):
            parts[is_validation(str(f.relative_to(root)))].append(data)
    n_train, n_val = len(parts[False]), len(parts[True])
    if n_train + n_val == 0:
        raise CorpusError(f"corpus folder {root} has no UTF-8 text files (looked at {len(files)} files with suffixes {TEXT_SUFFIXES})")
    if n_val == 0 or n_train == 0:
        # Too few files for a split by file: split the bytes 95/5 instead.
        whole = b"".join(parts[False] + parts[True])
        cut = int(len(whole) * (1 - VAL_FRACTION))
        train, val = whole[:cut], whole[cut:]
    else:
        train, val = b"".join(parts[False]), b"".join(parts[True])
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "train.bin", train)
    _write_atomic(out / "val.bin", val)
    meta = {"source": str(root), "n_files": [n_train, n_val], "train_bytes": len(train), "val_bytes": len(val)}
    _write_atomic(out / "meta.json", json.dumps(meta).encode())  # written last: marks the cache complete
    return meta


def load_corpus(source: str | os.PathLike | None = None, min_bytes: int = 4096) -> Corpus:
    """The corpus from ``source`` (default: the standard library), built on first use.

    Raises:
      CorpusError: the folder does not exist, has no text, or too little of it.
    """
    root = pathlib.Path(source) if source is not None else default_source()
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} does not exist or is not a folder")
    files = _text_files(root)
    out = cache_root() / "corpus" / _cache_key(root, files)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else _build(root, files, out)
    if meta["train_bytes"] < min_bytes or meta["val_bytes"] < 2:
        raise CorpusError(f"corpus folder {root} has only {meta['train_bytes'] + meta['val_bytes']} bytes of text; need at least {min_bytes}")
    train = np.memmap(out / "train.bin", dtype=np.uint8, mode="r")
    val = np.memmap(out / "val.bin", dtype=np.uint8, mode="r")
    return Corpus(train=train, val=val, source=str(root), n_files=tuple(meta["n_files"]))


def validation_batches(val: np.ndarray, seq_len: int, n_tokens: int, batch_size: int) -> np.ndarray:
    """Fixed validation windows ``[n_batches, batch_size, seq_len + 1]``, evenly spaced over ``val``.

    The same for every run with the same ``seq_len``, so losses are comparable.
    Windows may overlap when the validation split is short.
    """
    n_seqs = max(batch_size, -(-n_tokens // seq_len) // batch_size * batch_size)
    span = len(val) - seq_len - 1
    if span < 0:
        raise CorpusError(f"validation split has {len(val)} bytes, shorter than one sequence of {seq_len + 1}")
    starts = np.linspace(0, span, n_seqs).astype(np.int64)
    windows = np.stack([np.asarray(val[s : s + seq_len + 1]) for s in starts])
    return windows.reshape(-1, batch_size, seq_len + 1).astype(np.int32)
