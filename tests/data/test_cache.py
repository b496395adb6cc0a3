from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from ferlab.data import load_faces
from tests.fer_fixtures import make_faces, write_fer2013_csv, write_image_folder


def _count_decodes(monkeypatch):
    from ferlab.data import sources

    calls = []
    original = sources.Source.read

    def counting(self):
        calls.append(self.path)
        return original(self)

    monkeypatch.setattr(sources.Source, "read", counting)
    return calls


def test_decodes_once_then_reads_cache(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "fer", *make_faces())
    calls = _count_decodes(monkeypatch)
    first = load_faces(root, tmp_path / "cache")
    second = load_faces(root, tmp_path / "cache")
    assert len(calls) == 1
    np.testing.assert_array_equal(first.faces, second.faces)
    np.testing.assert_array_equal(first.sources, second.sources)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_changed_source_is_noticed(tmp_path, monkeypatch):
    faces, labels, usages = make_faces()
    path = write_fer2013_csv(tmp_path / "fer2013.csv", faces, labels, usages)
    calls = _count_decodes(monkeypatch)
    before = load_faces(path, tmp_path / "cache")
    write_fer2013_csv(path, faces[:-1], labels[:-1], usages[:-1])  # one row fewer
    after = load_faces(path, tmp_path / "cache")
    assert len(calls) == 2
    assert len(after) == len(before) - 1
    # the cache of the earlier content is gone; another source's cache is kept
    other = write_fer2013_csv(tmp_path / "other" / "fer2013.csv", faces, labels, usages)
    load_faces(other, tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    write_fer2013_csv(path, faces, labels, usages)
    load_faces(path, tmp_path / "cache")
    assert len(calls) == 4 and len(list((tmp_path / "cache").glob("*.npz"))) == 2
    assert len(load_faces(other, tmp_path / "cache")) == len(before) and len(calls) == 4


def test_cache_is_written_outside_a_read_only_root(tmp_path):
    root = write_image_folder(tmp_path / "fer", *make_faces())
    for dirpath, _, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(dirpath, name), stat.S_IREAD)
        os.chmod(dirpath, stat.S_IREAD | stat.S_IEXEC)
    try:
        table = load_faces(root, tmp_path / "cache")
        assert len(table) == 8 * 7
        assert not list(root.rglob("*.npz"))
    finally:
        for dirpath, _, _ in os.walk(root):
            os.chmod(dirpath, stat.S_IRWXU)


def test_corrupt_cache_is_rebuilt(tmp_path, caplog):
    path = write_fer2013_csv(tmp_path / "fer2013.csv", *make_faces())
    load_faces(path, tmp_path / "cache")
    (cache_file,) = (tmp_path / "cache").glob("*.npz")
    cache_file.write_bytes(b"truncated")
    table = load_faces(path, tmp_path / "cache")
    assert len(table) == 8 * 7
    assert "unreadable cache" in caplog.text


def test_unwritable_cache_dir_still_loads(tmp_path, caplog):
    path = write_fer2013_csv(tmp_path / "fer2013.csv", *make_faces())
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    table = load_faces(path, blocker)
    assert len(table) == 8 * 7
    assert "Could not write the FER2013 cache" in caplog.text


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    from ferlab.data.cache import default_cache_dir

    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("FERLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "ferlab"


@pytest.mark.parametrize("fmt", ["csv", "folder"])
def test_cache_round_trip_keeps_dtypes(tmp_path, fmt):
    faces = make_faces()
    root = (write_fer2013_csv(tmp_path / "fer2013.csv", *faces) if fmt == "csv"
            else write_image_folder(tmp_path / "fer", *faces))
    load_faces(root, tmp_path / "cache")
    table = load_faces(root, tmp_path / "cache")
    assert table.faces.dtype == np.uint8 and table.faces.shape[1:] == (48, 48)
    assert table.labels.dtype == np.int64 and table.splits.dtype == np.int8
