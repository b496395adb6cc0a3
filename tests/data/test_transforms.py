from __future__ import annotations

import numpy as np
import pytest
import torch

from ferlab.data import BatchAugment, preprocess, to_face
from ferlab.data.transforms import PIXEL_MEAN, PIXEL_STD


def _batch(b=16):
    g = torch.Generator().manual_seed(0)
    return preprocess(torch.randint(0, 256, (b, 48, 48), dtype=torch.uint8, generator=g))


def test_preprocess_standardises():
    x = preprocess(torch.full((2, 1, 48, 48), 255, dtype=torch.uint8))
    assert x.shape == (2, 1, 48, 48)
    assert torch.allclose(x, torch.full_like(x, (1 - PIXEL_MEAN) / PIXEL_STD))
    with pytest.raises(TypeError, match="uint8"):
        preprocess(torch.zeros(2, 48, 48))
    with pytest.raises(TypeError, match="uint8"):
        preprocess(np.zeros((2, 48, 48)))


def test_preprocess_gives_arrays_the_numbers_it_gives_tensors():
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    x = preprocess(faces)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and x.shape == (3, 1, 48, 48)
    np.testing.assert_allclose(x, preprocess(torch.from_numpy(faces)).numpy(), rtol=0, atol=1e-6)


def test_all_off_is_identity():
    x = _batch()
    aug = BatchAugment(flip=0, shift=0, rotate=0, scale=0, erase=0)
    assert torch.equal(aug(x), x)


def test_flip_only_flips():
    x = _batch()
    out = BatchAugment(flip=1.0, shift=0, rotate=0, scale=0, erase=0)(x)
    assert torch.equal(out, x.flip(-1))


def test_flip_inside_affine_path_matches_mirror():
    # a near-zero rotation keeps the affine path; the result must be the mirror image
    x = _batch()
    out = BatchAugment(flip=1.0, shift=0, rotate=1e-6, scale=0, erase=0)(x)
    assert torch.allclose(out, x.flip(-1), atol=1e-4)


def test_shift_moves_content():
    x = torch.zeros(1, 1, 48, 48)
    x[..., 20:28, 20:28] = 1.0
    torch.manual_seed(1)
    out = BatchAugment(flip=0, shift=0.2, rotate=0, scale=0, erase=0)(x.repeat(32, 1, 1, 1))
    centres = [torch.nonzero(o[0] > 0.5).float().mean(0) for o in out]
    assert max(float(torch.dist(c, torch.tensor([23.5, 23.5]))) for c in centres) > 2


def test_erase_zeroes_a_rectangle():
    x = torch.ones(64, 1, 48, 48)
    out = BatchAugment(flip=0, shift=0, rotate=0, scale=0, erase=1.0, erase_area=(0.1, 0.1))(x)
    erased = (out == 0).flatten(1).float().mean(1)
    assert torch.all(erased > 0.03) and torch.all(erased < 0.2)


def test_augment_keeps_shape_dtype_and_is_seeded():
    x = _batch()
    aug = BatchAugment()
    torch.manual_seed(3)
    a = aug(x)
    torch.manual_seed(3)
    b = aug(x)
    assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("kwargs", [{"flip": 1.5}, {"erase": -0.1}, {"scale": 1.0}, {"shift": -1}])
def test_bad_strengths(kwargs):
    with pytest.raises(ValueError):
        BatchAugment(**kwargs)


@pytest.mark.parametrize("shape", [(48, 48), (120, 90), (30, 30), (64, 20), (48, 48, 1)])
def test_to_face_any_crop(shape):
    face = to_face(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    assert face.shape == (48, 48) and face.dtype == np.uint8


def test_to_face_rejects_bad_crops():
    with pytest.raises(ValueError, match="uint8"):
        to_face(np.zeros((48, 48), np.float32))
    with pytest.raises(ValueError, match="grey"):
        to_face(np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="non-empty"):
        to_face(np.zeros((0, 48), np.uint8))


def test_tta_views():
    from ferlab.data.transforms import tta_views

    x = _batch(3)
    assert len(tta_views(x, "none")) == 1
    plain, mirror = tta_views(x, "flip")
    assert torch.equal(mirror, x.flip(-1))
    crops = tta_views(x, "tencrop")
    assert len(crops) == 10 and all(v.shape == x.shape for v in crops)
    # the second five are crops of the mirror image: its top-left is the mirrored top-right
    assert torch.allclose(crops[5], crops[1].flip(-1), atol=1e-6)
    with pytest.raises(ValueError, match="tencrop"):
        tta_views(x, "rotate")
