import os
import stat

import pytest

from ferlab.files import atomic_write, write_json


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    umask = os.umask(0o022)
    try:
        write_json(tmp_path / "metrics.json", {"acc": 0.7})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "metrics.json") == _mode(tmp_path / "plain.txt") == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"acc": 0.7})
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("{half")
        raise RuntimeError("killed")
    assert target.read_text() == '{\n  "acc": 0.7\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
