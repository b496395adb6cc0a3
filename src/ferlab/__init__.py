"""ferlab: facial expression recognition on FER2013 with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"

__all__ = ["EmotionRecognizer", "register_network"]


def __getattr__(name: str):
    # imported lazily: `import ferlab` stays light for code that only needs ferlab.data
    if name == "EmotionRecognizer":
        from ferlab.inference.recognizer import EmotionRecognizer

        return EmotionRecognizer
    if name == "register_network":  # a user's own network class, loadable from files
        from ferlab.models.schema import register_network

        return register_network
    raise AttributeError(f"module 'ferlab' has no attribute {name!r}")
