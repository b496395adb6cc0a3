"""ferlab: facial expression recognition on FER2013 with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"
