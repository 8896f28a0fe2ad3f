"""Vision-language pre-training of the single-stream MiniLM on easy-VQA's training images.

DAS transfers a vision-language pre-trained model; all-MiniLM-L6-v2 has read only text. As METER
pre-trains on COCO captions before VQAv2 on COCO images, this gives it image tokens its layers can bind
to words, with objectives other than the downstream answers:

- image–caption matching (ITM): a caption of the image ("a red circle", "the shape is red", ...) or the
  same caption with its colour and/or shape changed → matched or not;
- masked-word prediction (MLM): a matched caption with its colour and/or shape words masked → the words,
  from the whole vocabulary through the frozen word embeddings;
- word alignment: an image's tokens, as they enter the encoder, are pulled towards the frozen word
  embeddings of its caption words (its colour among the colours, its shape among the shapes, by cosine
  similarity pooled over the tokens — CLIP's contrastive form, and LLaVA's first stage of aligning image
  tokens to a frozen language model's input space).

The first ``align_steps`` steps train the stem alone on the word alignment (no encoder pass: fast); the
rest train everything on all three. Through the encoder alone the stem learnt shape slowly and
unstably (masked shape words between 0.5 and 0.8 for hundreds of steps), and so it did with the
alignment loss beside the other two from the first step.

The captions come from the attributes of each *training* image, read off its training questions and
answers (val and test images are never seen). What trains: the conv stem and rank-r LoRA deltas
(``peft``) on every linear layer of the encoder. Written out: the stem and the deltas (``lora_A``,
``lora_B``) as safetensors, merged into the frozen weights at load (``minilm_vl``'s ``vl_weights``),
and a JSON log. A checkpoint every ``checkpoint_every`` steps; the same command resumes after a stop,
also with another ``steps`` (the learning-rate decay then ends at the new last step; the log says so).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import save_file
from torch import nn

from das_tune.artifacts import atomic
from das_tune.artifacts.run_folder import write_checkpoint
from das_tune.backbones.bert import load_encoder, masked_mean
from das_tune.backbones.layered import additive_mask
from das_tune.backbones.processing import load_tokenizer, minilm_path
from das_tune.backbones.vl_bert import MEAN, STD, ImageTokens, joint_sequence
from das_tune.errors import UserError
from das_tune.progress import Reporter
from das_tune.training import loop

COLOURS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
ATTRIBUTES = ("colour", "shape")  # the kinds of masked words, in the order of ``kinds`` in an MLM batch
NEGATIONS = {"not", "no"}
LORA_TARGETS = ["query", "key", "value", "dense"]  # every linear layer of a BertLayer
STATE, LOG, WEIGHTS = "state.pt", "log.json", "minilm_vl.safetensors"

BOTH = ("a {c} {s}", "there is a {c} {s}", "the image contains a {c} {s}", "a {s} that is {c}", "the {s} is {c}",
        "the shape is a {c} {s}")
COLOUR_ONLY = ("a {c} shape", "the shape is {c}", "the color of the shape is {c}", "there is a {c} shape")
SHAPE_ONLY = ("a {s}", "the shape is a {s}", "there is a {s} in the image")


class PretrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(strict=True, default=2000, gt=0)
    batch_size: int = Field(strict=True, default=64, ge=4, description="half image–caption matching, half masked words")
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    lora_rank: int = Field(strict=True, default=8, gt=0)
    align_weight: float = Field(default=1.0, ge=0, description="weight of the word-alignment loss (0: none)")
    align_steps: int = Field(strict=True, default=300, ge=0, description="first steps: the stem alone, on the word alignment")
    image_size: int = 64
    checkpoint_every: int = Field(strict=True, default=100, gt=0)
    eval_every: int = Field(strict=True, default=100, gt=0)
    eval_images: int = Field(strict=True, default=200, gt=0, description="training images held out of the pre-training to score it")
    seed: int = Field(default=0, ge=0, lt=2**32, strict=True)
    tiny: bool = False

    @model_validator(mode="after")
    def _aligns_within_the_steps(self) -> PretrainSpec:
        if self.align_steps >= self.steps:
            raise ValueError(f"align_steps ({self.align_steps}) must be fewer than steps ({self.steps}): the stem alone would be trained")
        return self


@dataclass(frozen=True)
class Scene:
    colour: str | None
    shape: str | None


def scene_attributes(rows: list[tuple[str, str, int]]) -> dict[int, Scene]:
    """Each image's colour and shape, as far as its (question, answer, image id) rows tell them."""
    found: dict[int, dict[str, str]] = {}
    for question, answer, image_id in rows:
        words = set(question.rstrip("?").split())
        attrs = found.setdefault(image_id, {})
        if answer in COLOURS + SHAPES:  # "what color is the triangle?" -> blue: both are known
            attrs["colour" if answer in COLOURS else "shape"] = answer
            present = words
        else:  # "is there not a red shape?" -> no: red is present
            present = words if (answer == "yes") != bool(words & NEGATIONS) else set()
        for word in present & set(COLOURS):
            attrs["colour"] = word
        for word in present & set(SHAPES):
            attrs["shape"] = word
    return {i: Scene(a.get("colour"), a.get("shape")) for i, a in found.items() if a}


class CaptionSampler:
    """Random captions of a scene: matched or corrupted (ITM), or with attribute words masked (MLM)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def templates(self, scene: Scene) -> tuple[str, ...]:
        both = BOTH if scene.colour and scene.shape else ()
        return both + (COLOUR_ONLY if scene.colour else ()) + (SHAPE_ONLY if scene.shape else ())

    def matching(self, scene: Scene) -> tuple[str, int]:
        template = self.rng.choice(self.templates(scene))
        colour, shape = scene.colour, scene.shape
        if self.rng.random() < 0.5:
            return template.format(c=colour, s=shape), 1
        change = [k for k in ("c", "s") if "{" + k + "}" in template]
        change = self.rng.sample(change, self.rng.randint(1, len(change)))
        if "c" in change:
            colour = self.rng.choice([c for c in COLOURS if c != colour])
        if "s" in change:
            shape = self.rng.choice([s for s in SHAPES if s != shape])
        return template.format(c=colour, s=shape), 0

    def masked(self, scene: Scene, mask_token: str) -> tuple[str, list[str]]:
        """A matched caption with some attribute words replaced by ``mask_token``; the masked words in order."""
        template = self.rng.choice(self.templates(scene))
        keys = [k for k in ("c", "s") if "{" + k + "}" in template]
        masked = set(self.rng.sample(keys, self.rng.randint(1, len(keys))))
        words = {"c": scene.colour, "s": scene.shape}
        order = sorted(masked, key=lambda k: template.index("{" + k + "}"))
        filled = {k: (mask_token if k in masked else words[k]) for k in ("c", "s")}
        return template.format(**filled), [words[k] for k in order]


class PretrainModel(nn.Module):
    """The single-stream model with LoRA on its encoder, an ITM head, an MLM head tied to the word
    embeddings, and the attribute words' embeddings that the image tokens are aligned to.

    ``attribute_pieces`` holds the word-piece ids of ``COLOURS + SHAPES``; a word's embedding is the mean
    of its pieces' ("teal" is two pieces).
    """

    def __init__(self, encoder: nn.Module, image_size: int, lora_rank: int, attribute_pieces: list[list[int]]) -> None:
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        dim = encoder.config.hidden_size
        encoder.requires_grad_(False)
        self.lora_scale = 2.0  # lora_alpha / r
        inject_adapter_in_model(
            LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=LORA_TARGETS), encoder.encoder
        )
        self.encoder = encoder
        self.image_tokens = ImageTokens(dim, image_size, encoder.embeddings.LayerNorm)
        self.itm = nn.Linear(dim, 2)
        self.mlm = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=1e-12))
        self.mlm_bias = nn.Parameter(torch.zeros(encoder.config.vocab_size))
        words = encoder.embeddings.word_embeddings.weight.detach()
        self.register_buffer("attribute_words", torch.stack([words[ids].mean(0) for ids in attribute_pieces]), persistent=False)
        self.align_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # CLIP's learnt temperature, as a log

    def hidden(self, input_ids, attention_mask, pixel_values) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder's output, the valid-token mask, and the image tokens as they enter the encoder."""
        x, valid = joint_sequence(self.encoder.embeddings, self.image_tokens, input_ids, pixel_values, attention_mask)
        image = x[:, -self.image_tokens.position.shape[1] :]
        mask = additive_mask(valid, x.dtype)
        for layer in self.encoder.encoder.layer:
            out = layer(x, mask)
            x = out[0] if isinstance(out, tuple) else out
        return x, valid, image

    def alignment(self, image: torch.Tensor, attributes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy of each image's colour among the colours and shape among the shapes; a word's
        logit is the log-sum-exp over the image's tokens of their scaled cosine similarity with the word's
        embedding (a shape covers a few tokens: a mean over all of them is mostly background).
        ``attributes`` is ``[images, 2]`` indices into COLOURS and SHAPES, -100 where unknown."""
        similarity = F.normalize(image, dim=-1) @ F.normalize(self.attribute_words, dim=-1).T  # [images, tokens, words]
        logits = torch.logsumexp(similarity * self.align_scale.exp(), dim=1)
        by_attribute = (logits[:, : len(COLOURS)], logits[:, len(COLOURS) :])
        out, loss = {}, logits.new_zeros(())
        for k, (name, lg) in enumerate(zip(ATTRIBUTES, by_attribute, strict=True)):
            known = attributes[:, k] >= 0
            if known.any():  # a batch may know no image's shape: no term rather than a NaN
                loss = loss + F.cross_entropy(lg[known], attributes[known, k])
                out[f"align_{name}_accuracy"] = (lg[known].argmax(-1) == attributes[known, k]).float().mean()
        return {"align_loss": loss, **out}

    def stem_losses(self, itm: dict[str, torch.Tensor], mlm: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The word alignment alone, from the stem alone (the first ``align_steps``)."""
        image = self.image_tokens(torch.cat([itm["pixels"], mlm["pixels"]]))
        return self.alignment(image, torch.cat([itm["attributes"], mlm["attributes"]]))

    def losses(self, itm: dict[str, torch.Tensor], mlm: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = len(itm["labels"])
        joint = {k: _cat_padded(itm[k], mlm[k]) for k in ("input_ids", "attention_mask")}
        x, valid, image = self.hidden(joint["input_ids"], joint["attention_mask"], torch.cat([itm["pixels"], mlm["pixels"]]))
        itm_logits = self.itm(masked_mean(x[:n], valid[:n]))
        masked = x[n:, : mlm["input_ids"].shape[1]][mlm["input_ids"] == mlm["mask_id"]]
        mlm_logits = self.mlm(masked) @ self.encoder.embeddings.word_embeddings.weight.T + self.mlm_bias
        hits = (mlm_logits.argmax(-1) == mlm["targets"]).float()
        out = {
            "itm_loss": F.cross_entropy(itm_logits, itm["labels"]),
            "mlm_loss": F.cross_entropy(mlm_logits, mlm["targets"]),
            "itm_accuracy": (itm_logits.argmax(-1) == itm["labels"]).float().mean(),
            "mlm_accuracy": hits.mean(),
        }
        for kind, name in enumerate(ATTRIBUTES):  # the overall figure can hide one attribute stalling
            if (mlm["kinds"] == kind).any():
                out[f"mlm_{name}_accuracy"] = hits[mlm["kinds"] == kind].mean()
        return {**out, **self.alignment(image, torch.cat([itm["attributes"], mlm["attributes"]]))}

    def vl_weights(self) -> dict[str, torch.Tensor]:
        """The stem and the LoRA factors, keyed as :func:`das_tune.backbones.vl_bert.load_vl_weights` reads them."""
        weights = {f"image_tokens.{k}": v for k, v in self.image_tokens.state_dict().items()}
        for name, param in self.encoder.named_parameters():
            if ".lora_" in name:  # encoder.layer.0.attention.self.query.lora_A.default.weight
                module, _, rest = name.partition(".lora_")
                weights[f"{module}.lora_{rest.split('.')[0]}"] = param.detach()
        return {k: v.contiguous().clone() for k, v in weights.items()}


def _cat_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    width = max(a.shape[1], b.shape[1])
    return torch.cat([F.pad(a, (0, width - a.shape[1])), F.pad(b, (0, width - b.shape[1]))])


class CaptionData:
    """The training images (uint8, in memory) and their scenes; a seeded source of ITM and MLM batches."""

    def __init__(self, spec: PretrainSpec, tokenizer) -> None:
        from das_tune.tasks.easyvqa import EasyVQATask

        task = EasyVQATask(train_limit=400 if spec.tiny else None, val_limit=1, test_limit=1)
        examples = task.examples("train")  # the task's own train split: no val or test image
        self.scenes = scene_attributes([(e.question, task.answers[e.label], e.image_id) for e in examples])
        images = {e.image_id: e.image for e in examples if e.image_id in self.scenes}
        ids = sorted(images)
        random.Random(spec.seed).shuffle(ids)
        held = min(spec.eval_images, len(ids) // 5)
        self.eval_ids, self.train_ids = ids[:held], ids[held:]
        size = (spec.image_size, spec.image_size)
        self.pixels = {i: torch.from_numpy(np.array(images[i].resize(size))).permute(2, 0, 1) for i in ids}
        self.tokenizer = tokenizer

    def batch(self, ids: list[int], sampler: CaptionSampler) -> tuple[dict, dict]:
        """The first half of ``ids`` as matching pairs, the second as masked captions."""
        half = len(ids) // 2
        itm_ids, mlm_ids = ids[:half], ids[half:]
        captions, labels = zip(*(sampler.matching(self.scenes[i]) for i in itm_ids), strict=True)
        itm = {**self._text(list(captions)), "labels": torch.tensor(labels), "pixels": self._pixels(itm_ids),
               "attributes": self._attributes(itm_ids)}
        masked = [sampler.masked(self.scenes[i], "\0") for i in mlm_ids]
        texts, pieces, kinds = [], [], []
        for caption, words in masked:  # a masked word of several word pieces is one [MASK] per piece
            for word in words:
                word_pieces = self.tokenizer.tokenize(word)
                caption = caption.replace("\0", " ".join([self.tokenizer.mask_token] * len(word_pieces)), 1)
                pieces += word_pieces
                kinds += [ATTRIBUTES.index("shape" if word in SHAPES else "colour")] * len(word_pieces)
            texts.append(caption)
        mlm = {
            **self._text(texts), "pixels": self._pixels(mlm_ids), "mask_id": self.tokenizer.mask_token_id,
            "targets": torch.tensor(self.tokenizer.convert_tokens_to_ids(pieces)), "kinds": torch.tensor(kinds),
            "attributes": self._attributes(mlm_ids),
        }
        return itm, mlm

    def _text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(texts, padding=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def attribute_pieces(self) -> list[list[int]]:
        """The word-piece ids of each word of ``COLOURS + SHAPES``."""
        return [self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(w)) for w in COLOURS + SHAPES]

    def _attributes(self, ids: list[int]) -> torch.Tensor:
        scenes = [self.scenes[i] for i in ids]
        return torch.tensor([
            [COLOURS.index(s.colour) if s.colour else -100, SHAPES.index(s.shape) if s.shape else -100] for s in scenes
        ])

    def _pixels(self, ids: list[int]) -> torch.Tensor:
        pixels = torch.stack([self.pixels[i] for i in ids]).float() / 255.0
        return (pixels - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


class Pretraining:
    """The resumable loop: a checkpoint (``state.pt``) and the log every few steps, the weights at the end."""

    def __init__(self, spec: PretrainSpec, out_dir: Path, reporter: Reporter) -> None:
        self.spec, self.out_dir, self.reporter = spec, Path(out_dir), reporter
        torch.manual_seed(spec.seed)
        encoder = load_encoder(None if spec.tiny else minilm_path(), spec.tiny, 6)
        self.data = CaptionData(spec, load_tokenizer(minilm_path()))
        self.model = PretrainModel(encoder, spec.image_size, spec.lora_rank, self.data.attribute_pieces())
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
        warmup = max(1, int(spec.steps * spec.warmup_ratio))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min((s + 1) / warmup, max(0.0, (spec.steps - s) / max(1, spec.steps - warmup)))
        )
        self.rng = random.Random(spec.seed)
        self.step, self.seconds, self.log, self.running = 0, 0.0, [], []

    def run(self) -> Path:
        self._restore()
        self.reporter.phase("pre-training", self.spec.steps)
        for _ in range(self.step):
            self.reporter.advance(None)
        start = time.perf_counter() - self.seconds
        while self.step < self.spec.steps:
            self.running.append(self._train_step())
            self.step += 1
            self.seconds = time.perf_counter() - start
            self.reporter.advance(sum(v for k, v in self.running[-1].items() if k.endswith("_loss")))
            if self.step % self.spec.eval_every == 0 or self.step == self.spec.steps:
                self._log_entry()
            if self.step % self.spec.checkpoint_every == 0 or self.step == self.spec.steps:
                self._save()
        weights = self.out_dir / WEIGHTS
        metadata = {"lora_scale": str(self.model.lora_scale), "lora_rank": str(self.spec.lora_rank), "steps": str(self.step)}
        atomic.write_with(weights, lambda tmp: save_file(self.model.vl_weights(), tmp, metadata=metadata))
        return weights

    def _train_step(self) -> dict[str, float]:
        self.model.train()
        ids = self.rng.sample(self.data.train_ids, self.spec.batch_size)
        batch = self.data.batch(ids, CaptionSampler(self.rng))
        self.optimizer.zero_grad(set_to_none=True)
        if self.step < self.spec.align_steps:
            losses = self.model.stem_losses(*batch)
            losses["align_loss"].backward()
        else:
            losses = self.model.losses(*batch)
            (losses["itm_loss"] + losses["mlm_loss"] + self.spec.align_weight * losses["align_loss"]).backward()
        self.optimizer.step()
        self.scheduler.step()
        return {k: v.item() for k, v in losses.items()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """ITM and MLM accuracy on fixed captions of the held-out training images."""
        self.model.eval()
        sampler, totals = CaptionSampler(random.Random(12345)), []
        ids = self.data.eval_ids
        for start in range(0, len(ids) - 1, 64):
            losses = self.model.losses(*self.data.batch(ids[start : start + 64], sampler))
            totals.append({k: v.item() for k, v in losses.items()})
        return _means(totals)

    def _log_entry(self) -> None:
        entry = {"step": self.step, "seconds": round(self.seconds, 1), "train": _means(self.running), "eval": self.evaluate()}
        self.running = []
        self.log.append(entry)
        ev = entry["eval"]
        per_attribute = ", ".join(f"{a} {ev[f'mlm_{a}_accuracy']:.3f}" for a in ATTRIBUTES if f"mlm_{a}_accuracy" in ev)
        self.reporter.log(
            f"step {self.step}: eval ITM accuracy {ev['itm_accuracy']:.3f}, "
            f"masked-word accuracy {ev['mlm_accuracy']:.3f} ({per_attribute})"
        )

    def _save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "spec": self.spec.model_dump(), "step": self.step, "seconds": self.seconds, "log": self.log,
            "running": self.running, "model": {k: v for k, v in self.model.state_dict().items() if _trains(self.model, k)},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": self.rng.getstate(), "torch_rng": torch.get_rng_state(), "cuda_rng": loop.cuda_rng_state(),
        }
        write_checkpoint(self.out_dir / STATE, state)
        log = {"spec": self.spec.model_dump(), "images": len(self.data.train_ids), "eval_images": len(self.data.eval_ids),
               "entries": self.log}
        atomic.write_json_data(log, self.out_dir / LOG)

    def _restore(self) -> None:
        path = self.out_dir / STATE
        if not path.exists():
            return
        state = torch.load(path, weights_only=False)
        if _setup(state["spec"]) != _setup(self.spec.model_dump()):
            raise UserError(f"{path} was written by another pre-training setup; pass --fresh or another --out")
        try:
            self.model.load_state_dict(state["model"], strict=False)
        except RuntimeError as error:  # e.g. a checkpoint of an earlier stem
            raise UserError(f"{path} does not fit this version's model ({str(error).splitlines()[0]}); pass --fresh") from error
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        loop.set_cuda_rng_state(state.get("cuda_rng"))
        self.step, self.seconds, self.log, self.running = state["step"], state["seconds"], state["log"], state["running"]
        if state["spec"]["steps"] != self.spec.steps:  # the learning-rate decay now ends at the new last step
            self.log.append({"step": self.step, "steps_changed": [state["spec"]["steps"], self.spec.steps]})
        self.reporter.log(f"resuming the pre-training at step {self.step} of {self.spec.steps}")


def _means(records: list[dict[str, float]]) -> dict[str, float]:
    """Each key's mean over the records that have it (a batch may mask no word of an attribute)."""
    keys = dict.fromkeys(k for r in records for k in r)
    return {k: float(np.mean([r[k] for r in records if k in r])) for k in keys}


def _setup(spec: dict) -> dict:
    """What a checkpoint must share with a run that resumes it: all but the step count and the cadences."""
    return {k: v for k, v in spec.items() if k not in ("steps", "checkpoint_every", "eval_every")}


def _trains(model: nn.Module, key: str) -> bool:
    return dict(model.named_parameters()).get(key, torch.empty(0)).requires_grad


def pretrain(spec: PretrainSpec, out_dir: Path, reporter: Reporter | None = None, *, fresh: bool = False) -> Path:
    """Run (or resume) the pre-training; returns the path of the written weights."""
    out_dir = Path(out_dir)
    if fresh:
        (out_dir / STATE).unlink(missing_ok=True)
    return Pretraining(spec, out_dir, reporter or Reporter()).run()
