"""Exact duplicates by content: FER2013's test splits repeat some training faces."""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np


def content_keys(faces: np.ndarray) -> list[bytes]:
    """A hash of each face's decoded pixels (N, H, W) uint8."""
    faces = np.ascontiguousarray(faces)
    return [hashlib.blake2b(face.tobytes(), digest_size=16).digest() for face in faces]


def duplicated_in(faces: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Boolean mask (N,): which ``faces`` have an exact pixel copy in ``reference``."""
    seen = set(content_keys(reference))
    return np.array([key in seen for key in content_keys(faces)], dtype=bool)


def duplicate_groups(faces: np.ndarray) -> list[np.ndarray]:
    """Index groups of two or more identical faces, largest group first."""
    groups: dict[bytes, list[int]] = defaultdict(list)
    for i, key in enumerate(content_keys(faces)):
        groups[key].append(i)
    found = [np.array(g) for g in groups.values() if len(g) > 1]
    return sorted(found, key=len, reverse=True)
