"""Everything that turns data sets (FER2013, FER+) into uint8 faces and labels, and batches for
training."""

from ferlab.data.cache import load_faces
from ferlab.data.labels import EMOTIONS, FACE_SIZE, SPLITS, class_names, remap_labels
from ferlab.data.sources import DataFormatError, DataNotFoundError, FaceTable, locate
from ferlab.data.transforms import BatchAugment, preprocess, to_face

__all__ = [
    "EMOTIONS", "FACE_SIZE", "SPLITS", "BatchAugment", "DataFormatError", "DataNotFoundError",
    "FER2013DataModule", "FERPlusDataModule", "FaceTable", "FolderDataModule", "MixtureDataModule",
    "class_names",
    "load_faces", "locate", "preprocess", "remap_labels", "to_face",
]


def __getattr__(name: str):
    # the LightningDataModule is imported on first use, so that inference (which needs faces and
    # labels, never batches for a Trainer) does not import Lightning
    if name in ("FER2013DataModule", "FERPlusDataModule", "FolderDataModule",
                "MixtureDataModule"):
        from ferlab.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'ferlab.data' has no attribute {name!r}")
