"""Any timm network by name, fitted to ferlab's 48 px grey faces (``model=timm``)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ferlab.data.labels import EMOTIONS, FACE_SIZE
from ferlab.data.transforms import to_network_input

log = logging.getLogger(__name__)


class TimmNetwork(nn.Module):
    """``timm.create_model(name)`` with ferlab's class count, never downloading weights.

    Faces arrive as every ferlab network takes them, (B, 1, H, W) from the one preprocessing;
    the network sees them resized by ``input_size / 48`` (a 48 px face at ``input_size``) and,
    with ``in_chans=3``, the grey channel repeated. ImageNet networks downsample 32 times, so
    48 px leaves a 2 px map for the last stage: ``input_size`` 64-96 suits them better, at the
    cost of (input_size / 48)^2 the compute. Initial weights from a file: ``model.weights=``
    (:mod:`ferlab.models.weights`), never ``pretrained=True``.
    """

    def __init__(
        self,
        name: str = "resnet18",
        num_classes: int = len(EMOTIONS),
        in_chans: int = 1,
        input_size: int = FACE_SIZE,
        dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise ValueError(f"timm has no network {name!r} (timm {timm.__version__}); "
                             "timm.list_models('<pattern>') lists the names, e.g. resnet18, "
                             "regnetx_004, convnext_atto.")
        self.body = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                      in_chans=in_chans, drop_rate=dropout,
                                      drop_path_rate=drop_path)
        self.name, self.in_chans, self.input_size = name, in_chans, input_size
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, num_classes)
        return self.body(to_network_input(x, self.input_size / FACE_SIZE, self.in_chans))

    def fold_batch_norm(self) -> None:
        """Fold each batch norm into the convolution before it (timm keeps them as attributes,
        not in Sequentials): through torch.fx, where the network traces."""
        from torch.fx.experimental.optimization import fuse
        from torch.fx.proxy import TraceError

        try:
            self.body = fuse(self.body)
        except (TraceError, TypeError, RuntimeError, NotImplementedError) as err:
            # fx cannot trace every network (data-dependent control flow): keep it as it is
            log.debug("timm %s does not trace (%s): its batch norms stay unfolded", self.name,
                      err)
