"""METER (CLIP ViT-B/16 + RoBERTa-base + 6 + 6 co-attention fusion layers) as DAS uses it.

:class:`MeterCore` holds the pre-trained weights under the official checkpoint's names (so loading is
a short key mapping); :class:`MeterBackbone` then adds adapters and the skip switch. Candidates:
FL0-5 (text-side fusion), FV0-5 (image-side fusion), LEn0-11 (RoBERTa layers). The CLIP layers are
never candidates.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from das_tune.backbones.adapters import SkippableLayer, add_lora
from das_tune.backbones.fusion import FusionLayer
from das_tune.backbones.layered import LayerSkipBackbone, additive_mask, check_petl, extend_rows
from das_tune.backbones.processing import example_text, images_to_tensor, load_tokenizer, minilm_path, minilm_vocab_size, tokenize
from das_tune.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

FULL = dict(
    dim=768, heads=12, ffn=3072, fusion_layers=6, dropout=0.1,
    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=11, num_attention_heads=12, patch_size=16),
    text=dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
              intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
              layer_norm_eps=1e-5),
)
TINY = dict(
    dim=32, heads=2, ffn=64, fusion_layers=6, dropout=0.1,
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16),
    text=dict(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=128, type_vocab_size=1, pad_token_id=0, bos_token_id=101, layer_norm_eps=1e-5),
)


class ClipVision(nn.Module):
    """METER's CLIP image tower: the final LayerNorm applies to all tokens and there is no projection."""

    def __init__(self, config) -> None:
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPVisionEmbeddings

        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.post_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.pre_norm(self.embeddings(pixel_values))
        for layer in self.layers:
            x = layer(x, None)
        return self.post_norm(x)


class Pooler(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class ITMHead(nn.Module):
    """METER's pre-trained image-text matching head (``itm_score.fc``: "no match", "match")."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 2)


class MeterCore(nn.Module):
    """The pre-trained METER modules, named as in the official checkpoint (text and vision renamed)."""

    def __init__(self, sizes: dict[str, Any], image_size: int) -> None:
        from transformers import CLIPVisionConfig, RobertaConfig
        from transformers.models.roberta.modeling_roberta import RobertaEmbeddings, RobertaLayer

        super().__init__()
        self.sizes = sizes
        dim, text_config = sizes["dim"], RobertaConfig(**sizes["text"])
        vision_config = CLIPVisionConfig(image_size=image_size, attn_implementation="sdpa", **sizes["vision"])
        self.vision = ClipVision(vision_config)
        self.text_embeddings = RobertaEmbeddings(text_config)
        self.text_layers = nn.ModuleList(RobertaLayer(text_config) for _ in range(text_config.num_hidden_layers))
        self.cross_modal_text_transform = nn.Linear(text_config.hidden_size, dim)
        self.cross_modal_image_transform = nn.Linear(sizes["vision"]["hidden_size"], dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        fusion = [FusionLayer(dim, sizes["heads"], sizes["ffn"], sizes["dropout"]) for _ in range(2 * sizes["fusion_layers"])]
        self.cross_modal_text_layers = nn.ModuleList(fusion[: sizes["fusion_layers"]])
        self.cross_modal_image_layers = nn.ModuleList(fusion[sizes["fusion_layers"]:])
        self.cross_modal_text_pooler = Pooler(dim)
        self.cross_modal_image_pooler = Pooler(dim)
        self.itm_score = ITMHead(2 * dim)
        self.text_dim = text_config.hidden_size
        self.bos_token_id = text_config.bos_token_id


class MeterBackbone(LayerSkipBackbone):
    """Features: the two pooled streams concatenated (``2 × 768``).

    Trainable, as the reference's name filter (classifier, pooler, token_type_embeddings, rank_output,
    adapter; never the encoders): adapters, skip-adapters, both poolers, the token-type table and
    ``token4classifier``. ``pretrained_itm`` holds the checkpoint's ITM head (for Flickr30K's heads).
    """

    tiny_ignores = ("tokenizer", "image_size", "max_text_len")

    def __init__(
        self, core: MeterCore, tokenizer_path: str | None, *, adapter_width: int = 96,
        skip_adapter_width: int = 288, text_skip_adapter_width: int = 192, petl: str = "adapter",
        lora_rank: int = 8, max_text_len: int = 40,
    ) -> None:
        super().__init__()
        check_petl(petl)
        dim = core.token_type_embeddings.embedding_dim
        self.core_sizes = core.sizes
        for layer in [*core.cross_modal_text_layers, *core.cross_modal_image_layers]:
            if petl == "lora":
                add_lora(layer, ["query", "value"], lora_rank)
            else:
                layer.add_adapters(adapter_width)
        self.vision = core.vision
        self.text_embeddings = core.text_embeddings
        # The released DAS code puts no adapters inside RoBERTa; its layers only gain skip-adapters.
        self.text_layers = nn.ModuleList(
            SkippableLayer(f"LEn{i}", layer, core.text_dim, text_skip_adapter_width)
            for i, layer in enumerate(core.text_layers)
        )
        # DAS: a learnable classifier token, RoBERTa's <s> embedding, replaces token 0 of the text
        # stream after cross_modal_text_transform.
        with torch.no_grad():
            bos = torch.full((1, 1), core.bos_token_id, dtype=torch.long, device=core.token_type_embeddings.weight.device)
            self.token4classifier = nn.Parameter(core.text_embeddings.eval()(input_ids=bos).clone())
        self.pretrained_itm: dict[str, torch.Tensor] | None = None  # set by build() from a checkpoint
        self.cross_modal_text_transform = core.cross_modal_text_transform
        self.cross_modal_image_transform = core.cross_modal_image_transform
        self.token_type_embeddings = core.token_type_embeddings
        self.text_fusion = nn.ModuleList(
            SkippableLayer(f"FL{i}", layer, dim, skip_adapter_width) for i, layer in enumerate(core.cross_modal_text_layers)
        )
        self.image_fusion = nn.ModuleList(
            SkippableLayer(f"FV{i}", layer, dim, skip_adapter_width) for i, layer in enumerate(core.cross_modal_image_layers)
        )
        self.text_pooler = core.cross_modal_text_pooler
        self.image_pooler = core.cross_modal_image_pooler
        self.layer_names = [m.name for m in [*self.text_fusion, *self.image_fusion, *self.text_layers]]
        self.feature_dim = 2 * dim
        self.image_size = core.vision.embeddings.image_size
        self.max_text_len = max_text_len
        self.tokenizer_path = tokenizer_path
        self.freeze(extras=[self.text_pooler, self.image_pooler, self.token_type_embeddings])
        self.token4classifier.requires_grad_(True)

    def cross_modal_modules(self) -> list[nn.Module]:
        """The reference's "cross_modal" parameters: the poolers and the adapters inside fusion layers
        (its skip-adapters, ``adapter_list_l/v``, train at the base lr)."""
        kept = [m.layer for m in [*self.text_fusion, *self.image_fusion] if m.layer is not None]
        return [self.text_pooler, self.image_pooler, *kept]

    def use_image_token_types(self, count: int) -> None:
        self.token_type_embeddings = extend_rows(self.token_type_embeddings, 1 + count)

    @classmethod
    def build(
        cls, checkpoint: str | None = None, tiny: bool = False, tokenizer: str | None = None,
        image_size: int | None = None, random_weights: bool = False, **options: Any,
    ) -> MeterBackbone:
        """Tiny random sizes or full size; weights from ``checkpoint`` (required at full size unless ``random_weights``)."""
        if tiny:
            sizes = {**TINY, "text": {**TINY["text"], "vocab_size": minilm_vocab_size()}}
            core, tokenizer = MeterCore(sizes, image_size or 64), tokenizer or minilm_path()
        else:
            core = MeterCore(FULL, image_size or 384)
        if checkpoint is not None:
            from das_tune.backbones.meter_checkpoint import load_meter_checkpoint

            load_meter_checkpoint(core, checkpoint)
        elif not (tiny or random_weights):
            raise UserError(
                "METER needs its pre-trained weights: download meter_clip16_288_roberta_pretrain.ckpt and pass "
                "checkpoint=PATH (or random_weights=True for FLOPs counting only)"
            )
        model = cls(core.eval(), tokenizer, **options)
        if checkpoint is not None:
            model.pretrained_itm = {k: v.detach().clone() for k, v in core.itm_score.fc.state_dict().items()}
        return model

    def preprocess(self, texts, images=None, text_pairs=None) -> dict[str, torch.Tensor]:
        if images is None or len(images) != len(texts):
            raise UserError("METER needs one image per text")
        if self.tokenizer_path is None:
            raise UserError("METER needs a RoBERTa tokenizer: pass tokenizer=PATH to a local roberta-base folder")
        inputs = tokenize(load_tokenizer(self.tokenizer_path), texts, text_pairs, self.max_text_len)
        inputs["pixel_values"] = images_to_tensor(images, self.image_size, CLIP_MEAN, CLIP_STD)
        return inputs

    def example_inputs(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        device = self.token4classifier.device
        return {
            **example_text(batch_size, self.max_text_len, device),
            "pixel_values": torch.zeros(batch_size, 3, self.image_size, self.image_size, device=device),
        }

    def features(self, input_ids, pixel_values, attention_mask=None, token_type_ids=None, image_token_type=1) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text = self.text_embeddings(input_ids=input_ids)
        text_mask = additive_mask(attention_mask, text.dtype)
        for layer in self.text_layers:
            text = layer(text, text_mask)
        x = self.cross_modal_text_transform(text)
        x = torch.cat([self.token4classifier.expand(len(x), -1, -1), x[:, 1:]], dim=1)
        x = x + self.token_type_embeddings(torch.zeros_like(input_ids))
        image = self.cross_modal_image_transform(self.vision(pixel_values.to(text.dtype)))
        y = image + self.token_type_embeddings.weight[image_token_type]
        image_mask = additive_mask(y.new_ones(y.shape[:2]), y.dtype)
        for fl, fv in zip(self.text_fusion, self.image_fusion):
            x, y = fl(x, y, text_mask, image_mask), fv(y, x, image_mask, text_mask)
        return torch.cat([self.text_pooler(x), self.image_pooler(y)], dim=-1)

