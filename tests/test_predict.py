"""The predict command line on folders mixing good and bad inputs, videos and annotation."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferlab.data import EMOTIONS
from ferlab.predict import build_parser, run


def _run(argv: list[str]) -> tuple[int, list[dict], str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(build_parser().parse_args([*argv, "--no-progress"]), stdout=out, stderr=err)
    text = out.getvalue()
    return code, text, err.getvalue()


def _records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def mixed_folder(tmp_path, portrait):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    bgr = cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(folder / "hopper.jpg"), bgr)
    cv2.imwrite(str(folder / "sub" / "wall.png"), np.full((120, 160, 3), 90, np.uint8))
    good = (folder / "hopper.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image\n")
    (folder / ".hidden.jpg").write_bytes(b"skipped")
    return folder


def test_a_link_loop_and_an_unlistable_folder_are_error_records(mixed_folder, tiny_model_file,
                                                                  monkeypatch):
    """Each becomes its own error record while the rest of the batch goes on (a loop used to
    stop the whole batch, an unlistable folder to be skipped without a word)."""
    import os

    (mixed_folder / "loop.jpg").symlink_to(mixed_folder / "loop.jpg")
    (mixed_folder / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path=".", *args):  # a folder this user may not list (root may list any)
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    code, text, err = _run([str(mixed_folder), "--model", str(tiny_model_file)])
    assert code == 1
    records = {Path(r["source"]).name: r for r in _records(text)}
    assert "symbolic link loop" in records["loop.jpg"]["error"]
    assert "cannot be listed (Permission denied)" in records["locked"]["error"]
    assert records["hopper.jpg"]["status"] == "ok" and "wall.png" in records


def test_mixed_folder_records_summary_and_status(mixed_folder, tiny_model_file, tmp_path):
    missing = tmp_path / "nope.jpg"
    code, text, err = _run([str(mixed_folder), str(missing), "--model", str(tiny_model_file)])
    assert code == 1
    records = _records(text)
    by_source = {}
    for r in records:
        by_source.setdefault(Path(r["source"]).name, []).append(r)
    assert set(by_source) == {"hopper.jpg", "wall.png", "truncated.jpg", "empty.jpg",
                              "notes.txt", "nope.jpg"}
    (face,) = by_source["hopper.jpg"]
    assert face["status"] == "ok" and face["label"] in EMOTIONS
    assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert [t["label"] for t in face["top_k"]][0] == face["label"] and len(face["top_k"]) == 2
    assert by_source["wall.png"] == [{"source": str(mixed_folder / "sub/wall.png"),
                                      "status": "no_face"}]
    for bad, reason in [("truncated.jpg", "corrupt or truncated"), ("empty.jpg", "empty"),
                        ("notes.txt", "not an image in a format Pillow reads"),
                        ("nope.jpg", "no such file")]:
        (record,) = by_source[bad]
        assert record["status"] == "error" and reason in record["error"], record
        assert bad in err
    assert "6 inputs, 1 faces, 4 failed" in err


def test_all_good_inputs_exit_zero(mixed_folder, tiny_model_file):
    code, text, _ = _run([str(mixed_folder / "hopper.jpg"), str(mixed_folder / "sub"),
                          "--model", str(tiny_model_file)])
    assert code == 0 and len(_records(text)) == 2


def test_bf16_precision_gives_the_same_face(mixed_folder, tiny_model_file):
    base = [str(mixed_folder / "hopper.jpg"), "--model", str(tiny_model_file), "--tta", "none"]
    (exact,) = _records(_run(base)[1])
    code, text, _ = _run([*base, "--precision", "bf16"])
    (fast,) = _records(text)
    assert code == 0 and fast["box"] == exact["box"]
    for name, p in exact["probabilities"].items():
        assert fast["probabilities"][name] == pytest.approx(p, abs=0.02)


def test_glob_patterns(mixed_folder, tiny_model_file, tmp_path):
    code, text, _ = _run([str(mixed_folder / "**" / "*.png"), str(tmp_path / "zz*.jpg"),
                          "--model", str(tiny_model_file)])
    records = _records(text)
    assert [Path(r["source"]).name for r in records] == ["wall.png", "zz*.jpg"]
    assert records[1]["status"] == "error" and code == 1


def test_csv_output_to_file(mixed_folder, tiny_model_file, tmp_path):
    target = tmp_path / "out" / "faces.csv"
    code, text, _ = _run([str(mixed_folder / "hopper.jpg"), "--format", "csv", "--output",
                          str(target), "--model", str(tiny_model_file)])
    assert code == 0 and text == ""
    lines = target.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:6] == ["source", "frame", "time", "face", "status", "x"]
    assert [f"p_{c}" for c in EMOTIONS] == [h for h in header if h.startswith("p_")]
    row = dict(zip(header, lines[1].split(",")))
    assert row["status"] == "ok" and row["label"] in EMOTIONS
    assert sum(float(row[f"p_{c}"]) for c in EMOTIONS) == pytest.approx(1, abs=1e-4)


def test_existing_output_is_never_replaced_by_default(mixed_folder, tiny_model_file, tmp_path):
    target = tmp_path / "faces.jsonl"
    target.write_text("earlier results\n")
    with pytest.raises(SystemExit, match="--overwrite"):
        _run([str(mixed_folder / "hopper.jpg"), "-o", str(target), "--model",
              str(tiny_model_file)])
    assert target.read_text() == "earlier results\n"
    with pytest.raises(SystemExit, match="is one of the inputs"):
        _run([str(mixed_folder / "hopper.jpg"), "-o", str(mixed_folder / "hopper.jpg"),
              "--overwrite", "--model", str(tiny_model_file)])


def test_annotate_writes_new_files_and_leaves_inputs(mixed_folder, tiny_model_file, tmp_path):
    before = _digest(mixed_folder)
    out = tmp_path / "annotated"
    for _ in range(2):
        _run([str(mixed_folder), "--annotate", str(out), "--model", str(tiny_model_file)])
    assert _digest(mixed_folder) == before
    names = sorted(p.name for p in out.iterdir())
    # each copy in its input's format: a JPEG stays a JPEG (a PNG of a photo is ~10x larger)
    assert names == ["hopper.annotated-1.jpg", "hopper.annotated.jpg", "wall.annotated-1.png",
                     "wall.annotated.png"]
    assert (out / "hopper.annotated.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    annotated = cv2.imread(str(out / "hopper.annotated.jpg"))
    original = cv2.imread(str(mixed_folder / "hopper.jpg"))
    assert annotated.shape == original.shape
    assert np.abs(annotated.astype(int) - original.astype(int)).sum() > 0


def test_annotate_into_the_input_folder_never_overwrites(mixed_folder, tiny_model_file):
    before = _digest(mixed_folder)
    _run([str(mixed_folder / "hopper.jpg"), "--annotate", str(mixed_folder), "--model",
          str(tiny_model_file)])
    after = _digest(mixed_folder)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"hopper.annotated.jpg"}


def test_decompression_bomb_is_refused(tmp_path, tiny_model_file):
    big = tmp_path / "big.png"
    cv2.imwrite(str(big), np.zeros((400, 400), np.uint8))
    code, text, err = _run([str(big), "--max-pixels", "10000", "--model", str(tiny_model_file)])
    (record,) = _records(text)
    assert code == 1 and record["status"] == "error" and "over the limit" in record["error"]


@pytest.fixture
def video(tmp_path, portrait) -> Path:
    path = tmp_path / "clip.avi"
    bgr = cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR)
    h, w = bgr.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for i in range(30):  # 3 s at 10 fps: the face, then 10 frames of a blank wall
        writer.write(bgr if i < 20 else np.full_like(bgr, 80))
    writer.release()
    return path


def test_video_frames_are_sampled(video, tiny_model_file, tmp_path):
    code, text, _ = _run([str(video), "--fps", "2", "--model", str(tiny_model_file),
                          "--annotate", str(tmp_path / "ann")])
    records = _records(text)
    assert code == 0
    assert [r["frame"] for r in records] == [0, 5, 10, 15, 20, 25]
    assert [r["time"] for r in records] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert [r["status"] for r in records] == ["ok"] * 4 + ["no_face"] * 2
    annotated = cv2.VideoCapture(str(tmp_path / "ann" / "clip.annotated.mp4"))
    assert annotated.isOpened() and int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    annotated.release()


def test_broken_video_is_an_error_record(tmp_path, tiny_model_file):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    code, text, _ = _run([str(bad), "--model", str(tiny_model_file)])
    (record,) = _records(text)
    assert code == 1 and record["status"] == "error" and "broken.mp4" in record["error"]
    # FFmpeg's own lines ("moov atom not found") stay off the user's stderr
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    result = subprocess.run([sys.executable, "-m", "ferlab.predict", str(bad), "--model",
                             str(tiny_model_file), "--no-progress"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 1 and "broken.mp4" in result.stdout
    assert "moov atom" not in result.stderr and "cannot be opened" in result.stderr


def test_feature_maps(mixed_folder, tiny_model_file, tmp_path):
    _run([str(mixed_folder / "hopper.jpg"), "--feature-maps", str(tmp_path / "fm"), "--model",
          str(tiny_model_file)])
    (figure,) = (tmp_path / "fm").iterdir()
    assert figure.name == "hopper.face0.png" and figure.stat().st_size > 5000


def test_console_entry_point(mixed_folder, tiny_model_file):
    result = subprocess.run([sys.executable, "-m", "ferlab.predict", str(mixed_folder / "sub"),
                             "--model", str(tiny_model_file), "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "no_face"


def test_missing_model_is_a_clear_error(mixed_folder, tmp_path):
    with pytest.raises(SystemExit, match="nope.pt"):
        _run([str(mixed_folder / "hopper.jpg"), "--model", str(tmp_path / "nope.pt")])
    not_a_model = tmp_path / "notes.pt"
    not_a_model.write_text("not a model")
    with pytest.raises(SystemExit, match="notes.pt"):
        _run([str(mixed_folder / "hopper.jpg"), "--model", str(not_a_model)])


@pytest.mark.parametrize("option, value, why", [
    ("--fps", "0", "must be > 0"), ("--fps", "nan", "must be > 0"),
    ("--scale-factor", "1.0", "must be > 1"), ("--min-face", "0", "must be >= 1"),
    ("--threads", "0", "must be >= 1"), ("--margin", "-0.5", "must be >= 0"),
    ("--top-k", "two", "'two' is not an integer"), ("--max-pixels", "0", "must be >= 1"),
])
def test_bad_numbers_are_refused_before_any_work(option, value, why, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["photo.jpg", option, value])
    assert stop.value.code == 2
    assert f"argument {option}: {why}" in capsys.readouterr().err
