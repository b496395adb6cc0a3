"""Plain nn.Module networks; variants are parameters chosen in conf/model/."""

from ferlab.models.vgg import VGG

__all__ = ["VGG"]
