"""Plain nn.Module networks; variants are parameters chosen in conf/model/."""

from ferlab.models.blocks import fold_batch_norm
from ferlab.models.resnet import ResNet
from ferlab.models.timm_network import TimmNetwork
from ferlab.models.vgg import VGG

__all__ = ["VGG", "ResNet", "TimmNetwork", "fold_batch_norm"]
