"""The corpus: built from local text, split by file, cached, and refused when empty."""

import numpy as np
import pytest

from proxy_models import data


def write_files(root, n, text="hello byte-level world\n" * 50):
    for i in range(n):
        (root / f"doc{i:03d}.txt").write_text(f"{i}: {text}")


def test_default_corpus_is_the_stdlib_split_by_file(corpus):
    assert len(corpus.train) > 10_000_000 and len(corpus.val) > 100_000
    train_files, val_files = corpus.n_files
    assert 0.02 < val_files / (train_files + val_files) < 0.10
    assert corpus.train.dtype == np.uint8 and isinstance(corpus.train, np.memmap)


def test_split_is_a_pure_function_of_the_path():
    names = [f"pkg/module_{i}.py" for i in range(2000)]
    first = [data.is_validation(n) for n in names]
    assert first == [data.is_validation(n) for n in names]
    assert 0.03 < np.mean(first) < 0.07


def test_user_folder_and_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALESEARCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "texts"
    root.mkdir()
    write_files(root, 60)
    (root / "blob.bin").write_bytes(b"\x00\x01binary")  # not text: ignored by suffix and content
    (root / "image.txt").write_bytes(b"\x00\xff\xfe")
    a = data.load_corpus(root)
    b = data.load_corpus(root)
    assert bytes(a.train) == bytes(b.train) and sum(a.n_files) == 60
    assert b"\x00" not in bytes(a.train) + bytes(a.val)
    write_files(root, 61)  # a changed folder is rebuilt
    assert sum(data.load_corpus(root).n_files) == 61


def test_a_folder_without_text_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALESEARCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(data.CorpusError, match="has no UTF-8 text files"):
        data.load_corpus(tmp_path / "empty")
    with pytest.raises(data.CorpusError, match="does not exist"):
        data.load_corpus(tmp_path / "missing")


def test_validation_windows_are_fixed_and_evenly_spaced():
    val = np.arange(10_000, dtype=np.uint8)
    w = data.validation_batches(val, seq_len=16, n_tokens=512, batch_size=8)
    assert w.shape == (4, 8, 17)
    np.testing.assert_array_equal(w, data.validation_batches(val, 16, 512, 8))
