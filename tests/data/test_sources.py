from __future__ import annotations

import numpy as np
import pytest

from ferlab.data import EMOTIONS, SPLITS, DataFormatError, DataNotFoundError, locate
from ferlab.data.sources import read_csv, read_image_folder
from tests.fer_fixtures import make_faces, write_fer2013_csv, write_image_folder


def test_layouts_are_detected(csv_root, icml_root, folder_root):
    assert locate(csv_root).kind == "csv"
    assert locate(csv_root / "fer2013.csv").path.name == "fer2013.csv"
    assert locate(icml_root).path.name == "icml_face_data.csv"
    assert locate(folder_root).kind == "folder"


def test_both_csv_forms_read_identically(csv_root, icml_root, faces):
    pixels, labels, usages = faces
    a = read_csv(csv_root / "fer2013.csv")
    b = read_csv(icml_root / "icml_face_data.csv")
    np.testing.assert_array_equal(a.faces, pixels)
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_array_equal(a.labels, labels)
    np.testing.assert_array_equal(a.labels, b.labels)
    expected_splits = [SPLITS.index({"Training": "train", "PublicTest": "val",
                                     "PrivateTest": "test"}[u]) for u in usages]
    np.testing.assert_array_equal(a.splits, expected_splits)
    np.testing.assert_array_equal(a.splits, b.splits)


def test_image_folder_matches_csv_within_jpeg_error(csv_root, folder_root):
    csv = read_csv(csv_root / "fer2013.csv")
    folder = read_image_folder(folder_root)
    assert len(folder) == len(csv)
    # csv sources end in "line N" (N = row + 2); folder files are named <usage>_<row>.jpg
    csv_order = np.argsort([int(s.rsplit(" ", 1)[-1]) for s in csv.sources])
    folder_order = np.argsort([int(s.rsplit("_", 1)[-1][:-4]) for s in folder.sources])
    np.testing.assert_array_equal(folder.labels[folder_order], csv.labels[csv_order])
    np.testing.assert_array_equal(folder.splits[folder_order], csv.splits[csv_order])
    diff = np.abs(folder.faces[folder_order].astype(int) - csv.faces[csv_order].astype(int))
    assert diff.mean() < 3.0 and np.percentile(diff, 99) < 25  # JPEG quality 95 error


def test_select_split(csv_root, faces):
    table = read_csv(csv_root / "fer2013.csv")
    assert [len(table.select(s)) for s in SPLITS] == [4 * 7, 2 * 7, 2 * 7]
    with pytest.raises(ValueError, match="Unknown split"):
        table.select("validation")


# --- bad data: every error names the file (and line) and what was expected ---------------------

def _csv(tmp_path, mutate=None, **kwargs):
    faces, labels, usages = make_faces({"Training": 1, "PublicTest": 1, "PrivateTest": 1})
    path = write_fer2013_csv(tmp_path / "fer2013.csv", faces, labels, usages, **kwargs)
    if mutate:
        lines = path.read_text().splitlines()
        mutate(lines)
        path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_root_says_where_to_get_data(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist") as err:
        locate(tmp_path / "nowhere")
    assert "FERLAB_DATA" in str(err.value) and "fer2013.csv" in str(err.value)
    assert "Kaggle" in str(err.value)


def test_root_without_layout(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataNotFoundError, match="No FER2013 layout.*readme.txt"):
        locate(tmp_path)


def test_wrong_columns(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_text("label,image,split\n0,1 2 3,Training\n")
    with pytest.raises(DataFormatError, match=r"fer2013.csv: missing column\(s\) \['emotion'"):
        read_csv(path)


def test_pixel_row_with_wrong_count(tmp_path):
    def drop_pixel(lines):
        label, pixels, usage = lines[2].split(",")
        lines[2] = ",".join([label, " ".join(pixels.split()[:-1]), usage])

    with pytest.raises(DataFormatError,
                       match=r"fer2013.csv:line 3: .* has 2303 values; expected 2304"):
        read_csv(_csv(tmp_path, drop_pixel))


def test_pixel_value_not_integer(tmp_path):
    def corrupt(lines):
        label, pixels, usage = lines[4].split(",")
        values = pixels.split()
        values[10] = "12a"
        lines[4] = ",".join([label, " ".join(values), usage])

    with pytest.raises(DataFormatError, match=r"line 5: pixel value '12a' is not an integer"):
        read_csv(_csv(tmp_path, corrupt))


def test_pixel_value_out_of_range(tmp_path):
    def corrupt(lines):
        label, pixels, usage = lines[1].split(",")
        values = pixels.split()
        values[0] = "256"
        lines[1] = ",".join([label, " ".join(values), usage])

    with pytest.raises(DataFormatError, match=r"line 2: pixel value 256 is outside 0..255"):
        read_csv(_csv(tmp_path, corrupt))


@pytest.mark.parametrize("label", ["7", "-1", "happy", ""])
def test_label_outside_range(tmp_path, label):
    def corrupt(lines):
        lines[3] = label + lines[3][1:]

    with pytest.raises(DataFormatError, match=r"line 4: emotion label .* not an integer in 0..6"):
        read_csv(_csv(tmp_path, corrupt))


def test_line_numbers_count_blank_lines(tmp_path):
    """Blank lines are skipped, and the rows after them keep their lines in the file."""
    def corrupt(lines):
        lines[4] = lines[4].rsplit(",", 1)[0] + ",Validation"
        lines.insert(2, "")
        lines.insert(2, "")

    with pytest.raises(DataFormatError, match=r"line 7: Usage 'Validation' is not one of"):
        read_csv(_csv(tmp_path, corrupt))


def test_unknown_usage(tmp_path):
    def corrupt(lines):
        lines[2] = lines[2].rsplit(",", 1)[0] + ",Validation"

    with pytest.raises(DataFormatError, match=r"line 3: Usage 'Validation' is not one of"):
        read_csv(_csv(tmp_path, corrupt))


def test_csv_that_is_not_a_csv(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\x00\x01")
    with pytest.raises(DataFormatError, match="fer2013.csv"):
        read_csv(path)


def _folder(tmp_path):
    faces, labels, usages = make_faces({"Training": 1, "PublicTest": 1, "PrivateTest": 1})
    return write_image_folder(tmp_path / "fer", faces, labels, usages)


def test_unknown_class_folder(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "contempt").mkdir()
    with pytest.raises(DataFormatError, match=r"contempt: unknown class folder.*angry, disgust"):
        read_image_folder(root)


def test_image_that_does_not_decode(tmp_path):
    root = _folder(tmp_path)
    bad = root / "test" / "sad" / "PrivateTest_999999.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataFormatError, match=r"PrivateTest_999999.jpg: the file does not decode"):
        read_image_folder(root)


def test_empty_image_file(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "fear" / "Training_999998.jpg").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"Training_999998.jpg: the file does not decode"):
        read_image_folder(root)


def test_image_of_wrong_size(tmp_path):
    import cv2

    root = _folder(tmp_path)
    cv2.imwrite(str(root / "train" / "happy" / "Training_999997.jpg"),
                np.zeros((64, 48), np.uint8))
    with pytest.raises(DataFormatError, match=r"Training_999997.jpg: image is 48x64; .* 48x48"):
        read_image_folder(root)


def test_a_stray_file_beside_the_class_folders_is_called_a_file(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "notes.txt").write_text("x")
    with pytest.raises(DataFormatError, match=r"notes.txt: a file in .*train, which may only "
                                              r"hold the class folders"):
        read_image_folder(root)


def test_a_missing_class_folder_is_said(tmp_path, caplog):
    import shutil

    root = _folder(tmp_path)
    shutil.rmtree(root / "train" / "disgust")
    with caplog.at_level("WARNING"):
        table = read_image_folder(root)
    assert f"{root / 'train'} has no folder for disgust" in caplog.text
    assert "test has no folder" not in caplog.text and len(table) == 3 * len(EMOTIONS) - 1


def test_file_with_unexpected_name(tmp_path):
    root = _folder(tmp_path)
    (root / "test" / "angry" / "Training_1.jpg").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"Training_1.jpg: unexpected file in test/"):
        read_image_folder(root)


def test_hidden_files_are_ignored(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / ".DS_Store").write_bytes(b"x")
    (root / "train" / "angry" / ".thumbs").write_bytes(b"x")
    assert len(read_image_folder(root)) == 3 * len(EMOTIONS)
