import numpy as np

from ferlab.data.duplicates import duplicate_groups, duplicated_in


def test_planted_duplicates_are_found():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (20, 48, 48), dtype=np.uint8)
    test = rng.integers(0, 256, (10, 48, 48), dtype=np.uint8)
    test[2] = train[5]
    test[7] = train[11]
    near = train[3].copy()
    near[0, 0] ^= 1  # one pixel off: not an exact duplicate
    test[4] = near
    assert np.flatnonzero(duplicated_in(test, train)).tolist() == [2, 7]


def test_duplicate_groups():
    faces = np.zeros((6, 48, 48), np.uint8)
    faces[1] = 1
    faces[3] = 1
    faces[4] = 2
    groups = duplicate_groups(faces)
    assert [g.tolist() for g in groups] == [[0, 2, 5], [1, 3]]
