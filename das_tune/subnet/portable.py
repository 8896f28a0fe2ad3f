"""An exported subnet folder: what it holds and how its modules are rebuilt without the original
checkpoint.

    config.json         SubnetConfig: the backbone's architecture and options, the skipped layers,
                        the head's layers, the task and its labels, the run's test metric
    model.safetensors   every weight the subnet uses (the skipped layers' weights are not there)
    tokenizer/          the backbone's tokenizer

The architecture is rebuilt with random weights (from the saved transformers config, or METER's
sizes), the skipped layers are removed as ``export`` removes them, and the weights file is loaded
strictly, so a folder that does not match its config is an error, never a silently random model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from das_tune.backbones.base import SkippableBackbone
from das_tune.errors import UserError
from das_tune.spec.yaml_reader import validation_message

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_DIR = "config.json", "model.safetensors", "tokenizer"
HF_HEAD_CONFIG, HF_HEAD_WEIGHTS = "das_tune_head.json", "das_tune_head.safetensors"  # beside a --format hf export
FORMAT = "das-tune-subnet"


class SubnetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["das-tune-subnet"] = FORMAT
    version: Literal[1] = 1
    backbone: str  # the backbone's registry name
    tiny: bool
    options: dict[str, Any]  # the backbone's constructor options (adapter widths, petl, ...)
    architecture: dict[str, Any]  # what its weights' shapes follow: a transformers config, METER's sizes
    skipped: list[str]
    head: list[dict[str, Any]]
    task: str
    labels: list[str]
    metric: str | None = None  # the run's test metric, for reference
    value: float | None = None
    source: str | None = None  # the run folder it was exported from
    checksums: dict[str, str] = {}  # file name → sha256 of the weights written before this file (none in older exports)


def is_export_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read_config(path: Path) -> SubnetConfig:
    try:
        text = (path / CONFIG_FILE).read_text()
        if (path / HF_HEAD_CONFIG).is_file() and f'"{FORMAT}"' not in text:
            raise UserError(
                f"{path}: a Hugging Face folder (das-tune export --format hf), not a das-tune subnet: load it with "
                f"transformers (AutoModel.from_pretrained(DIR, add_pooling_layer=False): it has no pooler) and its head from "
                f"{HF_HEAD_CONFIG}; load_subnet and predict "
                "read a run folder or a --format safetensors export"
            )
        return SubnetConfig.model_validate_json(text)
    except OSError as error:
        raise UserError(f"{path / CONFIG_FILE}: cannot be read ({error.strerror})") from None
    except ValidationError as error:
        raise UserError(validation_message(f"{path / CONFIG_FILE} (an exported das-tune subnet)", error)) from None


# -- heads: small sequential stacks, described layer by layer -------------------------------------
HEAD_LAYERS: dict[str, tuple[type[nn.Module], Callable[[nn.Module], dict[str, Any]]]] = {
    "Linear": (nn.Linear, lambda m: {"in_features": m.in_features, "out_features": m.out_features}),
    "LayerNorm": (nn.LayerNorm, lambda m: {"normalized_shape": list(m.normalized_shape), "eps": m.eps}),
    "GELU": (nn.GELU, lambda m: {"approximate": m.approximate}),
    "Tanh": (nn.Tanh, lambda m: {}),
    "ReLU": (nn.ReLU, lambda m: {}),
}


def describe_head(head: nn.Module) -> list[dict[str, Any]]:
    """``[{"type": "Linear", ...}, ...]`` for a Sequential of known layers (or one Linear: a list of one)."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    described = []
    for layer in layers:
        kind = type(layer).__name__
        if kind not in HEAD_LAYERS or type(layer) is not HEAD_LAYERS[kind][0]:
            raise UserError(f"cannot export a head with a {kind} layer; expected layers of {', '.join(HEAD_LAYERS)}")
        described.append({"type": kind, **HEAD_LAYERS[kind][1](layer)})
    return [{"sequential": isinstance(head, nn.Sequential)}, *described]


def build_head(description: list[dict[str, Any]]) -> nn.Module:
    (shape, *layers) = description
    modules = [HEAD_LAYERS[layer["type"]][0](**{k: v for k, v in layer.items() if k != "type"}) for layer in layers]
    return nn.Sequential(*modules) if shape["sequential"] else modules[0]


# -- backbones: the architecture without its checkpoint ----------------------------------------------
@dataclass(frozen=True)
class Architecture:
    """How one backbone family is rebuilt: its class, the module its weights live in, and the factory
    options that only the factory reads (everything else goes to the constructor)."""

    cls: Callable[..., SkippableBackbone]
    describe: Callable[[SkippableBackbone], dict[str, Any]]
    modules: Callable[[dict[str, Any]], nn.Module]
    factory_only: tuple[str, ...]


def _hf_config(backbone: SkippableBackbone) -> dict[str, Any]:
    config = backbone.encoder_config
    return {"config": config.to_dict(), "attn_implementation": getattr(config, "_attn_implementation", None)}


def _hf_encoder(architecture: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(**architecture["config"])
    model = AutoModel.from_config(config, attn_implementation=architecture["attn_implementation"])
    model.pooler = None
    return model.eval()


def _vilt(architecture: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, ViltModel

    config = AutoConfig.for_model(**architecture["config"])
    return ViltModel(config).eval()


def _meter_core(architecture: dict[str, Any]) -> nn.Module:
    from das_tune.backbones.meter import MeterCore

    return MeterCore(architecture["sizes"], architecture["image_size"]).eval()


def _lm_config(backbone: SkippableBackbone) -> dict[str, Any]:
    return {"config": backbone.lm_config.to_dict()}


def _causal_lm(architecture: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(**architecture["config"])
    return AutoModelForCausalLM.from_config(config, dtype=config.dtype).eval()


def _architectures() -> dict[str, Architecture]:
    from das_tune.backbones import MeterBackbone, SingleStreamVL, TextEncoderBackbone, ViltBackbone, backbone_class

    text = Architecture(TextEncoderBackbone, _hf_config, _hf_encoder, ("tokenizer", "num_layers"))
    single_stream = Architecture(SingleStreamVL, _hf_config, _hf_encoder, ("tokenizer", "num_layers", "vl_weights"))
    meter_sizes = lambda b: {"sizes": b.core_sizes, "image_size": b.image_size}  # noqa: E731
    return {
        "bert": text,
        "minilm": text,
        "bert_vl": single_stream,
        "minilm_vl": single_stream,
        "vilt": Architecture(ViltBackbone, _hf_config, _vilt, ("tokenizer", "image_size", "random_weights")),
        "meter": Architecture(MeterBackbone, meter_sizes, _meter_core, ("tokenizer", "image_size", "random_weights")),
        **{
            name: Architecture(backbone_class(name), _lm_config, _causal_lm, ("tokenizer", "num_layers", "dtype"))
            for name in ("llama", "mistral", "qwen2")
        },
    }


def architecture_of(name: str) -> Architecture:
    architectures = _architectures()
    if name not in architectures:
        raise UserError(f"backbone {name!r} cannot be exported; expected one of {', '.join(architectures)}")
    return architectures[name]


def describe_backbone(backbone: SkippableBackbone) -> tuple[str, bool, dict[str, Any], dict[str, Any]]:
    """(registry name, tiny, constructor options, architecture) of a backbone built by ``build_backbone``."""
    built = getattr(backbone, "built_with", None)
    if built is None:
        raise UserError("only backbones built by das_tune.build_backbone can be exported")
    family = architecture_of(built["name"])
    options = {k: v for k, v in built["options"].items() if k not in family.factory_only}
    return built["name"], built["tiny"], options, family.describe(backbone)


def rebuild_backbone(config: SubnetConfig, tokenizer: Path) -> SkippableBackbone:
    """The exported subnet's modules with random weights (the skipped layers already gone) and its head."""
    family = architecture_of(config.backbone)
    full = family.cls(family.modules(config.architecture), str(tokenizer), **config.options)
    full.built_with = {"name": config.backbone, "tiny": config.tiny, "options": config.options}
    subnet = full.export(config.skipped)
    subnet.task_head = build_head(config.head)
    return subnet
