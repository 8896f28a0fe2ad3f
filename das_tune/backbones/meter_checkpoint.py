"""Loading the official METER checkpoint (``meter_clip16_288_roberta_pretrain.ckpt``) into :class:`MeterCore`.

The file is an old PyTorch Lightning pickle. A restricted unpickler rebuilds tensors and plain
containers and turns every other class (Lightning's, hyper-parameter objects ...) into an inert stub,
so Lightning need not be installed and no foreign code runs. A plain state_dict file (torch or
safetensors) works too. Keys are then mapped explicitly onto METER's module names.
"""

from __future__ import annotations

import logging
import pickle
import re
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from das_tune.errors import UserError

log = logging.getLogger(__name__)

# Parts of the checkpoint METER's backbone does not use (pre-training heads, CLIP's projection).
IGNORED = ("mlm_score.", "text_transformer.pooler.", "vit_model.visual.proj", "vit_model.logit_scale")
# (checkpoint pattern, model replacement), tried in order; the first match wins.
RENAMES = [
    (r"^text_transformer\.embeddings\.", "text_embeddings."),
    (r"^text_transformer\.encoder\.layer\.", "text_layers."),
    (r"^vit_model\.visual\.conv1\.", "vision.embeddings.patch_embedding."),
    (r"^vit_model\.visual\.class_embedding$", "vision.embeddings.class_embedding"),
    (r"^vit_model\.visual\.positional_embedding$", "vision.embeddings.position_embedding.weight"),
    (r"^vit_model\.visual\.ln_pre\.", "vision.pre_norm."),
    (r"^vit_model\.visual\.ln_post\.", "vision.post_norm."),
    (r"^vit_model\.visual\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"vision.layers.\1.self_attn.out_proj."),
    (r"^vit_model\.visual\.transformer\.resblocks\.(\d+)\.ln_1\.", r"vision.layers.\1.layer_norm1."),
    (r"^vit_model\.visual\.transformer\.resblocks\.(\d+)\.ln_2\.", r"vision.layers.\1.layer_norm2."),
    (r"^vit_model\.visual\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"vision.layers.\1.mlp.fc1."),
    (r"^vit_model\.visual\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"vision.layers.\1.mlp.fc2."),
    (r"^(cross_modal_|token_type_embeddings|itm_score\.)", r"\1"),
]
IN_PROJ = re.compile(r"^vit_model\.visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


@dataclass
class LoadReport:
    missing: list[str]
    unexpected: list[str]


class _Inert:
    """Stands in for any class the restricted unpickler will not import."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


class _RestrictedUnpickler(pickle.Unpickler):
    SAFE_MODULES = ("torch", "collections")

    def find_class(self, module: str, name: str):
        if module.split(".")[0] in self.SAFE_MODULES:
            return super().find_class(module, name)
        if module == "builtins" and name in ("set", "frozenset", "slice", "dict", "list", "tuple"):
            return super().find_class(module, name)
        return type(name, (_Inert,), {"__module__": module})


# torch.load's ``pickle_module``: the standard pickle with the restricted Unpickler.
_restricted_pickle = types.SimpleNamespace(**{**vars(pickle), "Unpickler": _RestrictedUnpickler})


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a Lightning checkpoint (its ``state_dict``), a torch state_dict or a safetensors file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"METER checkpoint {path} not found; put meter_clip16_288_roberta_pretrain.ckpt there "
            "or pass checkpoint=PATH"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except Exception as error:
        raise UserError(f"cannot read METER checkpoint {path}: {error}") from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds no state_dict of tensors; expected the official METER .ckpt")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def map_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Checkpoint keys → :class:`MeterCore` keys; also returns the keys that map to nothing."""
    mapped, unexpected = {}, []
    for key, value in state.items():
        if key.startswith(IGNORED):
            continue
        match = IN_PROJ.match(key)
        if match:
            layer, kind = match.groups()
            # CLIP stacks q|k|v in one projection; transformers' CLIP has three.
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):
                mapped[f"vision.layers.{layer}.self_attn.{part}.{kind}"] = chunk
            continue
        for pattern, replacement in RENAMES:
            if re.match(pattern, key):
                mapped[re.sub(pattern, replacement, key)] = value
                break
        else:
            unexpected.append(key)
    return mapped, unexpected


def _resize_positions(table: torch.Tensor, positions: int) -> torch.Tensor:
    """Bicubic interpolation of CLIP's [1 + grid², dim] position table to another grid (288 px → 384 px)."""
    if len(table) == positions:
        return table
    old, new = round((len(table) - 1) ** 0.5), round((positions - 1) ** 0.5)
    grid = table[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(new * new, -1).to(table.dtype)])


def load_meter_checkpoint(core: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load ``path`` into ``core``; missing backbone weights raise (unless not ``strict``), extras are reported."""
    mapped, unexpected = map_keys(read_state_dict(path))
    expected = core.state_dict()
    position_key = "vision.embeddings.position_embedding.weight"
    if position_key in mapped:
        mapped[position_key] = _resize_positions(mapped[position_key], len(expected[position_key]))
    unexpected += [k for k in mapped if k not in expected]
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in mapped.items() if k in expected and v.shape != expected[k].shape
    ]
    if mismatched:
        raise UserError(f"{path} does not fit METER (shape mismatch: {'; '.join(mismatched[:3])}); expected the "
                        "official meter_clip16_288_roberta_pretrain.ckpt")
    # position_ids is a buffer transformers builds itself.
    missing = [k for k in expected if k not in mapped and not k.endswith("position_ids")]
    if missing and strict:
        raise UserError(f"{path} lacks {len(missing)} METER weights (e.g. {', '.join(missing[:3])}); "
                        "expected the official meter_clip16_288_roberta_pretrain.ckpt")
    if unexpected:
        log.warning("METER checkpoint %s: %d unused keys (e.g. %s)", path, len(unexpected), ", ".join(unexpected[:3]))
    core.load_state_dict({k: v for k, v in mapped.items() if k in expected}, strict=False)
    return LoadReport(missing=missing, unexpected=unexpected)
