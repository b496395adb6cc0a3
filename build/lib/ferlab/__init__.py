"""ferlab: facial expression recognition on FER2013 with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"

__all__ = ["EmotionRecognizer"]


def __getattr__(name: str):
    # imported lazily: `import ferlab` stays light for code that only needs ferlab.data
    if name == "EmotionRecognizer":
        from ferlab.inference.recognizer import EmotionRecognizer

        return EmotionRecognizer
    raise AttributeError(f"module 'ferlab' has no attribute {name!r}")
