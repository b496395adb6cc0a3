"""Face detection, cropping and the EmotionRecognizer used by every inference path."""

from ferlab.inference.detect import Box, FaceDetector, HaarDetector, MTCNNDetector, make_detector
from ferlab.inference.images import ImageError, as_bgr, read_image, to_grey
from ferlab.inference.recognizer import EmotionRecognizer

__all__ = ["Box", "EmotionRecognizer", "FaceDetector", "HaarDetector", "ImageError",
           "MTCNNDetector", "as_bgr", "make_detector", "read_image", "to_grey"]
