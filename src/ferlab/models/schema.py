"""Network descriptions: how a file says which network it holds, as plain data.

A checkpoint, model file or ONNX file describes its network as ``{"_target_": <family>,
<field>: <value>, ...}`` (the shape of the Hydra model config it was trained from). Here the
``_target_`` is only a *name* looked up in :data:`FAMILIES`, never imported, and the fields are
validated against the family's schema (known fields, types and bounds) before ferlab's own code
builds the network; nothing read from a file is resolved as an interpolation or passed to
``hydra.utils.instantiate``. A user's own network becomes loadable only by a call in the user's
code: :func:`register_network`.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from torch import nn

from ferlab.models.resnet import ResNet
from ferlab.models.timm_network import TimmNetwork
from ferlab.models.vgg import VGG

# bounds on what a file may ask ferlab to allocate: the shipped networks have 1.2M and 3.5M
# parameters; 64M (256 MB in float32) leaves room for any FER network and refuses a stage list
# that would ask the allocator for gigabytes before anything is built
MAX_PARAMETERS = 64_000_000
MAX_STAGES, MAX_CONVS_PER_STAGE, MAX_WIDTH, MAX_HIDDEN_LAYERS, MAX_UNITS = 8, 8, 2048, 4, 8192
MAX_CLASSES, MAX_INPUT_SIZE = 1000, 512


class SchemaError(ValueError):
    """A network description that is not one ferlab can build."""


# the field types the families share
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]
Stages = Annotated[list[Annotated[list[Width], Field(min_length=1,
                                                     max_length=MAX_CONVS_PER_STAGE)]],
                   Field(min_length=1, max_length=MAX_STAGES)]
Classes = Annotated[int, Field(ge=2, le=MAX_CLASSES)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]  # a dropout rate
InputSize = Annotated[int, Field(ge=8, le=MAX_INPUT_SIZE)]


class Spec(BaseModel):
    """What every family's schema shares: strict types (a string is never read as a number, a
    number never as a bool), no unknown field, and a parameter count within the bound."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def parameters(self) -> int:
        raise NotImplementedError

    @model_validator(mode="after")
    def _bounded(self) -> Spec:
        count = self.parameters()
        if count > MAX_PARAMETERS:
            raise ValueError(f"it describes {count:,} parameters, over ferlab's bound of "
                             f"{MAX_PARAMETERS:,}")
        return self


class VGGSpec(Spec):
    """The fields of :class:`ferlab.models.VGG` a file may set, with their bounds."""

    num_classes: Classes = 7
    stages: Stages = [[32, 32, 32], [64, 64, 64], [128, 128, 128]]
    hidden: Annotated[list[Annotated[int, Field(ge=1, le=MAX_UNITS)]],
                      Field(max_length=MAX_HIDDEN_LAYERS)] = [256]
    dropout: Fraction = 0.5
    stage_dropout: Fraction = 0.0
    batch_norm: bool = True
    head: Literal["flatten", "gap"] = "flatten"
    in_channels: Literal[1, 3] = 1
    input_size: InputSize = 48

    @model_validator(mode="after")
    def _fits(self) -> VGGSpec:
        if self.head == "flatten" and self.input_size // 2 ** len(self.stages) < 1:
            raise ValueError(f"{len(self.stages)} pooling stages shrink a {self.input_size}px "
                             "input to nothing with head='flatten'")
        return self

    def parameters(self) -> int:
        """The parameter count of the VGG it describes, computed without building it."""
        count, channels = 0, self.in_channels
        for stage in self.stages:
            for width in stage:
                count += channels * width * 9 + (2 * width if self.batch_norm else width)
                channels = width
        feature = self.input_size // 2 ** len(self.stages)
        width = channels if self.head == "gap" else channels * feature * feature
        for units in [*self.hidden, self.num_classes]:
            count += width * units + units
            width = units
        return count


class ResNetSpec(Spec):
    """The fields of :class:`ferlab.models.ResNet` a file may set, with their bounds."""

    num_classes: Classes = 7
    stages: Stages = [[64, 64], [128, 128], [256, 256], [512, 512]]
    stem: Width = 64
    dropout: Fraction = 0.0
    in_channels: Literal[1, 3] = 1
    input_size: InputSize = 48

    @model_validator(mode="after")
    def _fits(self) -> ResNetSpec:
        if self.input_size // 2 ** (len(self.stages) - 1) < 1:
            raise ValueError(f"{len(self.stages)} stages halve a {self.input_size}px input to "
                             "nothing")
        return self

    def parameters(self) -> int:
        """The parameter count of the ResNet it describes, computed without building it."""
        count = self.in_channels * self.stem * 9 + 2 * self.stem
        channels = self.stem
        for i, stage in enumerate(self.stages):
            for j, width in enumerate(stage):
                count += channels * width * 9 + width * width * 9 + 4 * width
                if channels != width or (i and not j):  # a 1x1 shortcut with its batch norm
                    count += channels * width + 2 * width
                channels = width
        return count + channels * self.num_classes + self.num_classes


class TimmSpec(Spec):
    """The fields of :class:`ferlab.models.TimmNetwork`: a name timm knows (checked against
    ``timm.list_models()``, never imported from the file) and its input."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[a-z0-9_.]+$")] = \
        "resnet18"
    num_classes: Classes = 7
    in_chans: Literal[1, 3] = 1
    input_size: InputSize = 48
    dropout: Fraction = 0.0
    drop_path: Fraction = 0.0

    @model_validator(mode="before")
    @classmethod
    def _known(cls, fields: Any) -> Any:
        name = fields.get("name", "resnet18") if isinstance(fields, Mapping) else None
        if isinstance(name, str) and name not in _timm_names():
            import timm

            raise ValueError(f"name {_short(name)} is not a network of timm "
                             f"{timm.__version__} (timm.list_models())")
        return fields

    def parameters(self) -> int:
        return _timm_parameters(self.name, self.num_classes, self.in_chans)


@functools.cache
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


@functools.cache
def _timm_parameters(name: str, num_classes: int, in_chans: int) -> int:
    """A timm network's parameter count, built once on the meta device (no memory): a file is
    validated more than once on its way to a network."""
    import timm

    with torch.device("meta"):
        network = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                    in_chans=in_chans)
    return sum(p.numel() for p in network.parameters())


@dataclass(frozen=True)
class Family:
    """A network class and the schema of the fields a file may give it."""

    network: type[nn.Module]
    schema: type[BaseModel]


def _name(network: type) -> str:
    return f"{network.__module__}.{network.__qualname__}"


# description names -> families, each under its short and its full name
FAMILIES: dict[str, Family] = {
    "ferlab.models.VGG": Family(VGG, VGGSpec),
    _name(VGG): Family(VGG, VGGSpec),
    "ferlab.models.ResNet": Family(ResNet, ResNetSpec),
    _name(ResNet): Family(ResNet, ResNetSpec),
    "ferlab.models.TimmNetwork": Family(TimmNetwork, TimmSpec),
    _name(TimmNetwork): Family(TimmNetwork, TimmSpec),
}


def register_network(network: type[nn.Module], schema: type[BaseModel] | None = None) -> str:
    """Make files that describe ``network`` loadable (by its full name, ``module.Class``): a
    call in the user's code, never something a file can do. ``schema``: a pydantic model of
    the fields a file may set; by default one made from ``__init__``'s annotated arguments
    (bool, int, float, str and lists of them), which must all have annotations."""
    if not (isinstance(network, type) and issubclass(network, nn.Module)):
        raise TypeError(f"register_network takes an nn.Module class; got {network!r}.")
    schema = schema or _schema_from_signature(network)
    name = _name(network)
    FAMILIES[name] = Family(network, schema)
    return name


def _schema_from_signature(network: type[nn.Module]) -> type[BaseModel]:
    try:
        hints = typing.get_type_hints(network.__init__)
    except (NameError, TypeError) as err:
        raise TypeError(f"register_network({network.__name__}): its __init__ annotations cannot "
                        f"be resolved ({err}); pass schema=<a pydantic model>.") from err
    fields: dict[str, Any] = {}
    for param in list(inspect.signature(network.__init__).parameters.values())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name not in hints:
            raise TypeError(f"register_network({network.__name__}): argument {param.name!r} "
                            "needs a type annotation, or pass schema=<a pydantic model>.")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints[param.name], default)
    config = ConfigDict(extra="forbid", strict=True)
    return create_model(f"{network.__name__}Spec", __config__=config, **fields)


def build(description: Any, where: str = "the network description") -> nn.Module:
    """The network a description names, built by ferlab's code from validated fields."""
    family, spec = validate(description, where)
    return family.network(**spec.model_dump())


def validate(description: Any, where: str = "the network description") -> tuple[Family, Any]:
    """The family and validated fields of a description (SchemaError, naming the field, when
    it is not one ferlab can build)."""
    if not isinstance(description, Mapping) or not isinstance(description.get("_target_"),
                                                                  str):
        raise SchemaError(f"{where} is not a network description ({{'_target_': <network>, "
                          f"...}}); got {_short(description)}. The file was not written by "
                          "ferlab.")
    name = description["_target_"]
    family = FAMILIES.get(name)
    if family is None:
        raise SchemaError(
            f"{where} names the network {_short(name)}, which is not one ferlab builds "
            f"({', '.join(sorted(FAMILIES))}). ferlab never imports a class a file names; if it "
            "is your own network, call ferlab.register_network(YourNetwork) before loading.")
    fields = {k: v for k, v in description.items() if k != "_target_"}
    try:
        spec = family.schema.model_validate(fields)
    except ValidationError as err:
        raise SchemaError(f"{where} describes a {family.network.__name__} ferlab will not build: "
                          f"{describe_errors(err)}.") from None
    return family, spec


def normalised(description: Any, where: str = "the network description") -> dict[str, Any]:
    """A description as ferlab writes it: the family's name and every validated field."""
    family, spec = validate(description, where)
    return {"_target_": description["_target_"], **spec.model_dump()}


def describe_errors(err: ValidationError) -> str:
    """pydantic's errors as one line: ``field: what was wrong (got value)`` for each."""
    said = []
    for e in err.errors()[:5]:
        where = ".".join(map(str, e["loc"])) or "fields"
        got = "" if e["type"] == "value_error" else f" (got {_short(e.get('input'))})"
        said.append(f"{where}: {e['msg']}{got}")
    return "; ".join(said)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."

