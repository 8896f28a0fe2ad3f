"""``das-tune export``: a run's subnet as a folder that runs without the original checkpoint.

Formats:
    safetensors  model.safetensors + config.json + tokenizer/ (``load_subnet(DIR)`` loads it)
    onnx         model.onnx (torch's exporter) + config.json + tokenizer/, checked against PyTorch
                 with onnxruntime (largest output difference, latency of both)
    hf           a Hugging Face model folder with fewer layers (``AutoModel.from_pretrained``), for
                 BERT-family text encoders with plain layer removal (skip-adapter width 0) and kept
                 layers without parallel adapters (LoRA is merged into the weights); the pooling and
                 the task head go beside it in das_tune_head.json / das_tune_head.safetensors; for
                 decoders (Llama, Mistral, Qwen2) a causal LM folder that generates (hf_decoder.py)
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors.torch import save_file, save_model
from torch import nn

from das_tune.artifacts import atomic
from das_tune.artifacts.run_folder import read_run_folder
from das_tune.backbones.adapters import ParallelAdapter
from das_tune.backbones.base import SkippableBackbone
from das_tune.backbones.decoder import DecoderBackbone
from das_tune.backbones.processing import load_tokenizer
from das_tune.errors import UserError
from das_tune.subnet.hf_decoder import check_decoder_hf, write_hf_decoder
from das_tune.subnet.load import FolderSummary, Subnet, load_subnet, summarize
from das_tune.subnet.portable import (
    CONFIG_FILE,
    HF_HEAD_CONFIG,
    HF_HEAD_WEIGHTS,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    SubnetConfig,
    describe_backbone,
    describe_head,
    is_export_folder,
    read_config,
    rebuild_backbone,
)
from das_tune.subnet.predict import task_inputs

FORMATS: tuple[str, ...] = ("safetensors", "onnx", "hf")
ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-4


class OnnxCheck(BaseModel):
    """The ONNX graph against the PyTorch subnet on the same inputs."""

    max_abs_diff: float
    tolerance: float
    batch_sizes: list[int]
    torch_ms: float  # median latency at the first batch size, CPU
    onnxruntime_ms: float


class ExportResult(BaseModel):
    out: str
    format: str
    files: dict[str, int]  # file (relative to out) -> bytes on disk
    size_bytes: int  # what the format wrote: all of its files
    subnet_weight_bytes: int  # the subnet's tensors
    full_weight_bytes: int  # the same model with every layer kept (adapters, head), its tensors
    onnx: OnnxCheck | None = None

    @property
    def weight_ratio(self) -> float:
        return self.subnet_weight_bytes / self.full_weight_bytes


def export_subnet(
    source: str | Path, out: str | Path, format: str = "safetensors", overrides: dict[str, Any] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the subnet of ``source`` (a run folder or an exported folder) to the folder ``out``."""
    if format not in FORMATS:
        raise UserError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder; choose a new folder")
    _check_format(summarize(source), format)
    step = on_step or (lambda message: None)
    step(f"loading the subnet of {source}")
    model = load_subnet(source, overrides)
    config = subnet_config(model, source)
    if format == "hf":
        _check_hf(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))  # moved into place when complete
    try:
        step(f"writing {format}")
        with atomic.space_named(out):
            check = WRITERS[format](model, config, staging, step)
        atomic.share_like_created(staging)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return ExportResult(
        out=str(out), format=format, files=files, size_bytes=sum(files.values()),
        subnet_weight_bytes=weight_bytes(model.backbone), full_weight_bytes=full_weight_bytes(config), onnx=check,
    )


def subnet_config(model: Subnet, source: str | Path) -> SubnetConfig:
    name, tiny, options, architecture = describe_backbone(model.backbone)
    source = Path(source)
    if is_export_folder(source):  # re-exported: the run it came from stays the reference
        earlier = read_config(source)
        metric, value, source = earlier.metric, earlier.value, earlier.source
    else:
        metrics = read_run_folder(source).metrics
        metric, value = metrics.metric, metrics.value
    return SubnetConfig(
        backbone=name, tiny=tiny, options=options, architecture=architecture, skipped=model.skipped,
        head=describe_head(model.backbone.task_head), task=model.task, labels=model.labels,
        metric=metric, value=value, source=None if source is None else str(source),
    )


# -- sizes ---------------------------------------------------------------------------------------
def weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def full_weight_bytes(config: SubnetConfig) -> int:
    """Tensor bytes of the model with every layer kept, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        full = rebuild_backbone(config.model_copy(update={"skipped": []}), Path("unused"))
    return weight_bytes(full)


# -- formats --------------------------------------------------------------------------------------
def _write_common(model: Subnet, config: SubnetConfig, out: Path) -> None:
    """The tokenizer, and config.json last: it records the weights' sha256, checked when they are loaded."""
    load_tokenizer(model.backbone.tokenizer_path).save_pretrained(str(out / TOKENIZER_DIR))
    checksums = {name: atomic.sha256_of(out / name) for name in (WEIGHTS_FILE, ONNX_FILE) if (out / name).is_file()}
    (out / CONFIG_FILE).write_text(config.model_copy(update={"checksums": checksums}).model_dump_json(indent=2) + "\n")


def write_safetensors(model: Subnet, config: SubnetConfig, out: Path, step) -> None:
    save_model(model.backbone, str(out / WEIGHTS_FILE))
    _write_common(model, config, out)


def sample_inputs(model: Subnet, batch_size: int) -> dict[str, torch.Tensor]:
    """Tensors for ``batch_size`` made-up natural inputs, through the backbone's own processor."""
    from PIL import Image

    words = ["what", "shape", "is", "in", "the", "image", "today"]
    rows = [" ".join(words[: 2 + i % 5]) for i in range(batch_size)]
    texts = model.inputs.texts
    images = [Image.new("RGB", (64, 64), (40 * i % 255, 90, 160)) for i in range(batch_size)] if model.inputs.images else None
    pairs = rows[::-1] if len(texts) > 1 else None
    return model.backbone.preprocess(rows, images=images, text_pairs=pairs)


class _Positional(nn.Module):
    """The backbone with its inputs as positional tensors, in a fixed order (what the exporter traces)."""

    def __init__(self, backbone: SkippableBackbone, names: list[str]) -> None:
        super().__init__()
        self.backbone = backbone
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.backbone(**dict(zip(self.names, tensors)))


def write_onnx(model: Subnet, config: SubnetConfig, out: Path, step) -> OnnxCheck:
    example = sample_inputs(model, 2)  # batch 2: a batch of 1 would be specialised away
    names = list(example)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = tuple({0: batch, 1: sequence} if t.dim() == 2 else {0: batch} for t in example.values())
    with torch.no_grad(), _quiet_exporter():
        torch.onnx.export(
            _Positional(model.backbone, names).eval(), tuple(example.values()), str(out / ONNX_FILE),
            input_names=names, output_names=["logits"], dynamic_shapes=(shapes,), dynamo=True,
            external_data=weight_bytes(model.backbone) > 1_500_000_000, verbose=False,
        )
    _write_common(model, config, out)
    step("checking the ONNX graph against PyTorch with onnxruntime")
    return check_onnx(model, out / ONNX_FILE)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's ONNX exporter without the warnings that do not concern this export: torchvision's ops it
    cannot register (none is used here), its own use of a deprecated pytree check, and an axis name given
    to several inputs (the same batch and sequence for each, as meant)."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    registration.addFilter(_not_torchvision)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
            warnings.filterwarnings("ignore", r"# The axis name: \w+ will not be used", UserWarning)
            yield
    finally:
        registration.removeFilter(_not_torchvision)


def _not_torchvision(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("torchvision is not installed")


def onnx_session(path: Path):
    try:
        import onnxruntime
    except ImportError:
        raise UserError("--format onnx needs onnxruntime: pip install 'das-tune[onnx]'") from None
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_onnx(model: Subnet, path: Path, batch_sizes: tuple[int, ...] = (1, 3)) -> OnnxCheck:
    session = onnx_session(path)
    largest = 0.0
    for size in batch_sizes:
        inputs = sample_inputs(model, size)
        with torch.no_grad():
            expected = model(**inputs)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        largest = max(largest, (torch.from_numpy(got) - expected).abs().max().item())
    inputs = sample_inputs(model, batch_sizes[0])
    torch_s = median_seconds(lambda: model(**inputs))
    feed = {k: v.numpy() for k, v in inputs.items()}
    ort_s = median_seconds(lambda: session.run(None, feed))
    if largest > ONNX_TOLERANCE:
        raise RuntimeError(f"the ONNX graph differs from PyTorch by {largest:.3g} (tolerance {ONNX_TOLERANCE})")
    return OnnxCheck(
        max_abs_diff=largest, tolerance=ONNX_TOLERANCE, batch_sizes=list(batch_sizes),
        torch_ms=torch_s * 1e3, onnxruntime_ms=ort_s * 1e3,
    )


@torch.no_grad()
def median_seconds(run: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        run()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _check_format(folder: FolderSummary, format: str) -> None:
    """What can be told from the folder's small files, before the model is built."""
    if format == "onnx" and task_inputs(folder.task).pass_per_image:
        raise UserError(f"--format onnx: task {folder.task!r} runs the backbone once per image; export it as safetensors")
    if format == "onnx" and folder.backbone in DECODER_BACKBONES:
        raise UserError(
            f"--format onnx: backbone {folder.backbone!r} is a decoder, which das-tune does not export to ONNX; export "
            "--format hf and convert that folder with an exporter for causal LMs (e.g. optimum-cli export onnx)"
        )
    if format == "hf" and folder.backbone not in (*HF_BACKBONES, *DECODER_BACKBONES):
        raise UserError(
            f"--format hf: backbone {folder.backbone!r} is not a BERT-family text encoder ({', '.join(HF_BACKBONES)}) "
            f"or a decoder ({', '.join(DECODER_BACKBONES)}); export it as safetensors or onnx"
        )


# -- Hugging Face: plain layer removal on a BERT-family encoder or a decoder ------------------------
HF_BACKBONES = ("bert", "minilm")
DECODER_BACKBONES = ("llama", "mistral", "qwen2")  # causal LMs: das_tune/subnet/hf_decoder.py


def _check_hf(model: Subnet) -> None:
    backbone = model.backbone
    if isinstance(backbone, DecoderBackbone):
        return check_decoder_hf(backbone)
    widened = [layer.name for layer in backbone.layers if layer.skipped and layer.skip_adapter is not None]
    if widened:
        raise UserError(
            f"--format hf: skipped layers {', '.join(widened)} have skip-adapters; a plain Hugging Face model needs a "
            "space with skip_adapter_width: 0 (plain layer removal)"
        )
    if any(isinstance(m, ParallelAdapter) for m in backbone.modules()):
        raise UserError(
            "--format hf: the kept layers carry parallel adapters, which a plain Hugging Face model cannot hold; "
            "use backbone option petl: lora (merged into the weights)"
        )


def merged_layer(layer: nn.Module) -> nn.Module:
    """A copy of a kept layer with its LoRA weights merged into the base linear layers."""
    from peft.tuners.lora import LoraLayer

    layer = copy.deepcopy(layer)
    for name, module in list(layer.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(layer.get_submodule(parent), child, module.get_base_layer())
    return layer


def write_hf(model: Subnet, config: SubnetConfig, out: Path, step) -> None:
    from transformers import AutoModel

    backbone = model.backbone
    head = {"head": config.head, "task": config.task, "labels": config.labels, "skipped": config.skipped, "source": config.source}
    if isinstance(backbone, DecoderBackbone):
        return write_hf_decoder(backbone, head, out, merged_layer)
    kept = [layer.layer for layer in backbone.layers if not layer.skipped]
    hf_config = copy.deepcopy(backbone.encoder_config)
    hf_config.num_hidden_layers = len(kept)
    hf_model = AutoModel.from_config(hf_config, add_pooling_layer=False).eval()
    hf_model.embeddings.load_state_dict(backbone.embeddings.state_dict())
    for target, layer in zip(hf_model.encoder.layer, kept):
        target.load_state_dict(merged_layer(layer).state_dict())
    hf_model.save_pretrained(str(out))
    load_tokenizer(backbone.tokenizer_path).save_pretrained(str(out))
    (out / HF_HEAD_CONFIG).write_text(json.dumps({"pooling": backbone.pooling, **head}, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in backbone.task_head.state_dict().items()}, str(out / HF_HEAD_WEIGHTS))


WRITERS = {"safetensors": write_safetensors, "onnx": write_onnx, "hf": write_hf}
