"""Plain nn.Module networks; variants are parameters chosen in ferlab/conf/model/."""

from ferlab.models.blocks import fold_batch_norm
from ferlab.models.vgg import VGG

__all__ = ["VGG", "fold_batch_norm"]
