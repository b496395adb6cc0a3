"""Face detection, cropping and the EmotionRecognizer used by every inference path."""

from ferlab.inference.detect import Box, FaceDetector, HaarDetector
from ferlab.inference.images import ImageError, read_image, to_grey
from ferlab.inference.recognizer import EmotionRecognizer

__all__ = ["Box", "EmotionRecognizer", "FaceDetector", "HaarDetector", "ImageError",
           "read_image", "to_grey"]
