"""The volume family: Merlin's 3D vision-language model (image encoder, report encoder, two kinds of heads).

* Image encoder: an I3D ResNet (torchvision's ResNet with 3D ops, built here: `I3DResNet`) whose weights
  are inflated from a 2D torchvision ResNet (`inflate_resnet`), or a MONAI 3D network by name
  (`image_encoder: "monai:DenseNet121"`). Volumes are (B, 1, X, Y, Z); the last
  axis (Z, slices) is the one I3D adds.
* Text encoder: see pipelines/models/report_text.py.
* Heads: phenotype logits (linear on the pooled image features; sigmoid + BCE), and contrastive
  projections of image and text features to `embed_dim` with a learnable temperature.

A model folder (training output, export) holds `config.json` (model config + phenotype list),
`model.safetensors` (the full state dict, BatchNorm buffers included), `tokenizer/` and
`text_config/`; `save_model_dir` / `load_model_dir` write and read it. An export adds
`prompt_embeddings.safetensors`, its domain's finding prompts embedded (`save_prompt_embeddings`).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipelines.io.digests import WEIGHTS_ALGORITHM, file_digest
from pipelines.io.volume_shards import VolumeSample
from pipelines.models import report_text as T
from pipelines.models.folders import VOLUME_CONFIG_FILE
from pipelines.models.weights import weights_not_drawn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CONFIG_FILE = VOLUME_CONFIG_FILE
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
TEXT_CONFIG_DIR = "text_config"
TEXT_PREFIX = "text."  # the text encoder's parameters in the weights file
PROMPTS_FILE = "prompt_embeddings.safetensors"  # an export's default prompts, embedded: a prediction builds no text encoder


@dataclass
class VolumeModelConfig:
    """params.yaml `<domain>.base_model` of a volume domain. Defaults are the real setting (224x224x160)."""

    input_size: list[int] = field(default_factory=lambda: [224, 224, 160])  # X, Y, Z (Z = slices)
    image_encoder: str = "i3d_resnet18"   # i3d_resnet18|34|50 (torchvision, inflated) or "monai:<Net>"
    image_weights: Optional[str] = None   # 2D torchvision ResNet weights (.safetensors / .pt) to inflate
    time_dim: int = 3                     # I3D depth of inflated k x k kernels (1x1 kernels stay 1)
    image_width: int = 64                 # stem channels of the ResNet (64 = torchvision's)
    embed_dim: int = 512
    text_model: str = T.DEMO_TEXT_MODEL   # "demo-bert" or a transformers name / local folder
    text_hidden: int = 128                # demo-bert only
    text_layers: int = 2
    text_heads: int = 2
    vocab_size: int = 4096                # demo-bert tokenizer vocabulary
    context_length: int = 128             # report tokens
    init_logit_scale: float = math.log(1 / 0.07)


# ----------------------------------------------------------------------------- I3D ResNet

ResNetArch = Literal["resnet18", "resnet34", "resnet50"]
# torchvision's ResNets: (bottleneck blocks?, blocks per stage)
RESNET_ARCHS: dict[ResNetArch, tuple[bool, tuple[int, int, int, int]]] = {
    "resnet18": (False, (2, 2, 2, 2)), "resnet34": (False, (3, 4, 6, 3)), "resnet50": (True, (3, 4, 6, 3))}


class InflatedConv3d(nn.Module):
    """Conv3d with zero padding in-plane (as the 2D conv) and replicate padding along Z.

    Replicating edge slices (instead of zero-padding them) makes a Z-constant volume give exactly
    the 2D network's output on every slice, including the first and last (the I3D property).
    """

    def __init__(self, conv: nn.Conv3d, depth_pad: int) -> None:
        super().__init__()
        self.conv = conv
        self.depth_pad = depth_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad Z by replicating the edge slices, then convolve."""
        if self.depth_pad:
            p = self.depth_pad  # (F.pad's replicate mode cannot pad one axis of a 5D tensor alone)
            x = torch.cat([x[..., :1].expand(*x.shape[:-1], p), x, x[..., -1:].expand(*x.shape[:-1], p)], dim=-1)
        return self.conv(x)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int, time_dim: int) -> InflatedConv3d:
    """A torchvision ResNet's k x k conv (no bias, padding k // 2) inflated: k x k x t, t = time_dim unless k is 1."""
    t = time_dim if kernel > 1 else 1  # 1x1 projections stay 1x1x1, as in I3D
    conv = nn.Conv3d(in_channels, out_channels, (kernel, kernel, t), stride=stride, padding=(kernel // 2, kernel // 2, 0), bias=False)
    return InflatedConv3d(conv, t // 2)


def _fold_batch_norm(conv: InflatedConv3d, owner: nn.Module, name: str) -> None:
    """`owner.<name>`, the eval-mode BatchNorm3d after `conv`, folded into `conv`'s weights and a bias; an Identity in its place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    conv.conv = fuse_conv_bn_eval(conv.conv, getattr(owner, name))
    setattr(owner, name, nn.Identity())


class _Block(nn.Module):
    """torchvision's BasicBlock (two 3x3 convs) or Bottleneck (1x1, 3x3 with the stride, 1x1 to 4x), inflated.

    The modules are registered in torchvision's order and under its names, so a 2D state dict maps onto
    this one name for name, and building one draws the global RNG as inflating torchvision's did.
    """

    def __init__(self, in_channels: int, planes: int, stride: int, bottleneck: bool, time_dim: int) -> None:
        super().__init__()
        out_channels = planes * (4 if bottleneck else 1)
        self.bottleneck = bottleneck
        if bottleneck:
            self.conv1, self.bn1 = _conv(in_channels, planes, 1, 1, time_dim), nn.BatchNorm3d(planes)
            self.conv2, self.bn2 = _conv(planes, planes, 3, stride, time_dim), nn.BatchNorm3d(planes)
            self.conv3, self.bn3 = _conv(planes, out_channels, 1, 1, time_dim), nn.BatchNorm3d(out_channels)
        else:
            self.conv1, self.bn1 = _conv(in_channels, planes, 3, stride, time_dim), nn.BatchNorm3d(planes)
            self.conv2, self.bn2 = _conv(planes, planes, 3, 1, time_dim), nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(_conv(in_channels, out_channels, 1, stride, time_dim), nn.BatchNorm3d(out_channels))

    def fold_batch_norms(self) -> None:
        """Fold each BN into the conv before it (`I3DResNet.fold_batch_norms`)."""
        for i in (1, 2, 3) if self.bottleneck else (1, 2):
            _fold_batch_norm(getattr(self, f"conv{i}"), self, f"bn{i}")
        if self.downsample is not None:
            _fold_batch_norm(self.downsample[0], self.downsample, "1")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual block: its convs and BN on `x`, plus `x` (projected when its shape changes), rectified."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.bottleneck:
            out = self.bn3(self.conv3(self.relu(out)))
        out += x if self.downsample is None else self.downsample(x)  # in place, as torchvision's blocks: no extra activation
        return self.relu(out)


class I3DResNet(nn.Module):
    """torchvision's ResNet (`arch`, `width` stem channels) with every 2D op inflated to 3D; returns pooled features (B, C).

    Built here rather than from torchvision's modules, whose import (torchvision.ops imports torch._dynamo)
    costs about 0.9 s of every `predict ct`. `inflate_resnet` fills one from a 2D torchvision ResNet.
    """

    def __init__(self, arch: ResNetArch = "resnet18", width: int = 64, time_dim: int = 3, in_channels: int = 1) -> None:
        super().__init__()
        bottleneck, blocks = RESNET_ARCHS[arch]
        self.conv1 = _conv(in_channels, width, 7, 2, time_dim)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, 2, 1)  # max pooling pads with -inf: Z-constant-preserving as it is
        stages, channels = [], width
        for i, n in enumerate(blocks):
            planes, stride = width * 2**i, 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(_Block(channels, planes, stride if j == 0 else 1, bottleneck, time_dim))
                channels = planes * (4 if bottleneck else 1)
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)
        self.out_dim = channels
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each ResNet stage in backward (training only) instead of keeping its activations."""
        self.grad_checkpointing = enable

    @property
    def batch_norms_folded(self) -> bool:
        """Whether `fold_batch_norms` has run (the stem's BN is then an Identity)."""
        return isinstance(self.bn1, nn.Identity)

    def fold_batch_norms(self) -> None:
        """For inference: each BatchNorm3d folded into the convolution before it, in place (`for_inference`).

        In eval mode a BN is a fixed scale and shift per channel, so a conv followed by it is one conv with
        scaled weights and a bias (torch.nn.utils.fusion.fuse_conv_bn_eval): a pass over the activations
        fewer per conv, equal to float rounding. No BN statistics are left to train: `train()` then raises.
        Folding a folded net does nothing.
        """
        if self.batch_norms_folded:
            return
        if self.training:
            raise RuntimeError("batch norms are folded for inference: call eval() first")
        for stage in self.stages:
            for block in stage:
                block.fold_batch_norms()
        _fold_batch_norm(self.conv1, self, "bn1")  # last: its Identity is what says the net is folded

    def train(self, mode: bool = True) -> I3DResNet:
        """nn.Module.train, refused once the batch norms are folded (nothing left to train them with)."""
        if mode and self.batch_norms_folded:
            raise RuntimeError("this I3DResNet's batch norms are folded for inference; load the model again to train it")
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, out_dim) of volumes (B, C, X, Y, Z)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                # keep only stage inputs; recompute each stage's internals in backward
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x.mean(dim=(2, 3, 4))


def inflate_state_dict(state2d: dict[str, torch.Tensor], time_dim: int = 3, in_channels: int = 1) -> dict[str, torch.Tensor]:
    """A 2D torchvision ResNet's state dict as `I3DResNet`'s: k x k kernels repeated k x k x t and divided by t (I3D).

    A depth-constant volume then gives the 2D network's response. The classifier (`fc`) is dropped;
    the stem's RGB filters are summed into `in_channels` grey ones.
    """
    state3d = {}
    for name, value in state2d.items():
        if name.startswith("fc."):
            continue
        if name.startswith("layer"):  # layer1..4 -> stages.0..3
            stage, rest = name.removeprefix("layer").split(".", 1)
            name = f"stages.{int(stage) - 1}.{rest}"
        if value.ndim == 4:  # a conv's weight: ours sits in InflatedConv3d.conv
            w2d = value.detach()
            if name == "conv1.weight" and in_channels != w2d.shape[1]:
                # RGB -> grey: summing the input filters keeps the response to a grey image (R=G=B) unchanged
                w2d = w2d.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
            t = time_dim if max(w2d.shape[2:]) > 1 else 1
            name, value = name.removesuffix("weight") + "conv.weight", w2d.unsqueeze(-1).repeat(1, 1, 1, 1, t) / t
        state3d[name] = value
    return state3d


def resnet_arch(resnet2d: nn.Module) -> tuple[ResNetArch, int]:
    """(arch, stem width) of a 2D torchvision ResNet, or ValueError for one `I3DResNet` does not build."""
    bottleneck = hasattr(resnet2d.layer1[0], "conv3")
    blocks = tuple(len(getattr(resnet2d, f"layer{i}")) for i in range(1, 5))
    for arch, shape in RESNET_ARCHS.items():
        if shape == (bottleneck, blocks):
            return arch, int(resnet2d.conv1.out_channels)
    raise ValueError(f"not a ResNet I3DResNet builds ({'bottleneck' if bottleneck else 'basic'} blocks {blocks}); "
                     f"expected one of {list(RESNET_ARCHS)}")


def load_2d_weights(resnet2d: nn.Module, path: str | Path) -> None:
    """Load torchvision ResNet weights from .safetensors, or a .pt/.pth via weights_only torch.load."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = resnet2d.load_state_dict(state, strict=False)
    if [m for m in missing if not m.startswith("fc.")] or unexpected:
        raise ValueError(f"{path}: not a matching ResNet state dict (missing {missing[:4]}, unexpected {unexpected[:4]})")


def inflate_resnet(resnet2d: nn.Module, time_dim: int = 3, in_channels: int = 1) -> I3DResNet:
    """I3D inflation of a 2D torchvision ResNet (weights copied, k x k kernels divided by depth)."""
    arch, width = resnet_arch(resnet2d)
    net = I3DResNet(arch, width, time_dim, in_channels)
    net.load_state_dict(inflate_state_dict(resnet2d.state_dict(), time_dim, in_channels))
    return net


class MonaiEncoder(nn.Module):
    """A MONAI 3D network used as a feature extractor (its classifier output is the feature)."""

    def __init__(self, name: str, out_dim: int = 512) -> None:
        super().__init__()
        from monai.networks import nets

        ctor = getattr(nets, name, None)
        if ctor is None:
            raise ValueError(f"monai.networks.nets has no {name!r}")
        try:  # DenseNet-style signature
            self.net = ctor(spatial_dims=3, in_channels=1, out_channels=out_dim)
        except TypeError:  # ResNet-style signature (monai.networks.nets.resnet18 etc.)
            self.net = ctor(spatial_dims=3, n_input_channels=1, num_classes=out_dim)
        self.out_dim = out_dim

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Do nothing: the switch exists so every image encoder has it."""
        pass  # not wired for MONAI nets; use i3d_resnet* for checkpointed training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output (B, out_dim) for volumes (B, 1, X, Y, Z)."""
        return self.net(x)


def build_image_encoder(cfg: VolumeModelConfig, init_from_2d: bool = True) -> nn.Module:
    """The image encoder `cfg.image_encoder` names: an I3D ResNet or a MONAI network.

    An I3D ResNet's weights are inflated from a 2D torchvision ResNet, random (the global RNG) or
    `cfg.image_weights`; with `init_from_2d=False` it is the architecture alone, for a load that
    replaces every weight, and torchvision is not imported.
    """
    if cfg.image_encoder.startswith("monai:"):
        return MonaiEncoder(cfg.image_encoder.split(":", 1)[1], cfg.embed_dim)
    arch = cfg.image_encoder.removeprefix("i3d_")
    if arch not in RESNET_ARCHS:
        raise ValueError(f"unknown image_encoder {cfg.image_encoder!r}; expected i3d_resnet18|34|50 or monai:<Net>")
    if not init_from_2d:
        return I3DResNet(arch, cfg.image_width, cfg.time_dim)  # type: ignore[arg-type]
    import torchvision

    resnet2d = getattr(torchvision.models, arch)(weights=None)
    if cfg.image_width != 64:
        resnet2d = _narrow_resnet(arch, cfg.image_width)
    if cfg.image_weights:
        load_2d_weights(resnet2d, cfg.image_weights)
    return inflate_resnet(resnet2d, cfg.time_dim)


def for_inference(net: nn.Module, channels_last: bool) -> nn.Module:
    """`net` (a VolumeCLIP or an image encoder) made ready for inference, in place, and returned.

    Eval mode; an I3D ResNet's batch norms folded into its convolutions (`I3DResNet.fold_batch_norms`:
    the encoder at 224x224x160 1.1x faster in fp32 and bf16 on a CPU); with `channels_last`, its 5-D
    weights channels-last (pipelines.infer.device.channels_last_volumes says where that pays).
    """
    net.eval()
    for module in net.modules():
        if isinstance(module, I3DResNet):
            module.fold_batch_norms()
    if channels_last:
        net.to(memory_format=torch.channels_last_3d)  # the 5-D weights reordered; values unchanged
    return net


def _narrow_resnet(arch: str, width: int) -> nn.Module:
    """A torchvision ResNet with `width` stem channels (demo-size; widths scale 1, 2, 4, 8)."""
    from torchvision.models import resnet

    block, layers = {"resnet18": (resnet.BasicBlock, [2, 2, 2, 2]), "resnet34": (resnet.BasicBlock, [3, 4, 6, 3]),
                     "resnet50": (resnet.Bottleneck, [3, 4, 6, 3])}[arch]
    net = resnet.ResNet(block, layers)
    # rebuild with narrower stages: torchvision has no width knob for the stem, so construct by hand
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(block, width, layers[0])
    net.layer2 = net._make_layer(block, width * 2, layers[1], stride=2)
    net.layer3 = net._make_layer(block, width * 4, layers[2], stride=2)
    net.layer4 = net._make_layer(block, width * 8, layers[3], stride=2)
    net.fc = nn.Linear(width * 8 * block.expansion, 1000)
    return net


# ----------------------------------------------------------------------------- the model


class VolumeCLIP(nn.Module):
    """Image encoder + text encoder + phenotype head + contrastive projections.

    `init_from_2d` as `build_image_encoder`'s: False when a checkpoint replaces every weight.
    """

    def __init__(self, cfg: VolumeModelConfig, n_phenotypes: int, text_encoder: T.TextEncoder, init_from_2d: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = build_image_encoder(cfg, init_from_2d)
        self.text = text_encoder
        self.phenotype_head = nn.Linear(self.visual.out_dim, max(n_phenotypes, 1))
        self.n_phenotypes = n_phenotypes
        self.image_proj = nn.Linear(self.visual.out_dim, cfg.embed_dim)
        self.text_proj = nn.Linear(text_encoder.width, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Switch activation checkpointing in both encoders."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def image_features(self, volumes: torch.Tensor) -> torch.Tensor:
        """Pooled image-encoder features (B, C), before any head."""
        return self.visual(volumes)

    def encode_image(self, volumes: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, embed_dim)."""
        return F.normalize(self.image_proj(self.visual(volumes)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised report embeddings (B, embed_dim)."""
        return F.normalize(self.text_proj(self.text(input_ids, attention_mask)), dim=-1)

    def phenotype_logits(self, volumes: torch.Tensor) -> torch.Tensor:
        """Phenotype logits (B, n_phenotypes)."""
        return self.phenotype_head(self.visual(volumes))[:, : self.n_phenotypes]

    def forward(self, volumes: torch.Tensor, input_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """One image pass feeding both heads; text is encoded only when given (staged phase 1 skips it)."""
        feats = self.visual(volumes)
        out = {"phenotype_logits": self.phenotype_head(feats)[:, : self.n_phenotypes],
               "image_features": F.normalize(self.image_proj(feats), dim=-1),
               "logit_scale": self.logit_scale.exp()}
        if input_ids is not None:
            out["text_features"] = self.encode_text(input_ids, attention_mask)
        return out


# ----------------------------------------------------------------------------- inputs


def phenotype_targets(samples: Sequence[VolumeSample], label_space: Sequence[str]) -> torch.Tensor:
    """Multi-hot (B, P) float targets; phenotypes outside the label space are ignored."""
    index = {p: i for i, p in enumerate(label_space)}
    out = torch.zeros(len(samples), len(label_space))
    for b, s in enumerate(samples):
        for p in s.phenotypes:
            if p in index:
                out[b, index[p]] = 1.0
    return out


def volume_batch(samples: Sequence[VolumeSample], size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """(B, 1, X, Y, Z) float32; volumes of another size are resampled (trilinear) to `size`."""
    vols = []
    for s in samples:
        v = torch.from_numpy(np.ascontiguousarray(s.volume))
        if size is not None and tuple(v.shape[1:]) != tuple(size):
            v = F.interpolate(v[None], size=tuple(size), mode="trilinear", align_corners=False)[0]
        vols.append(v)
    return torch.stack(vols)


# ----------------------------------------------------------------------------- building / files


def new_tokenizer(cfg: VolumeModelConfig, corpus: list[str]) -> PreTrainedTokenizerBase:
    """The demo tokenizer trained on `corpus`, or the named model's own tokenizer."""
    if cfg.text_model == T.DEMO_TEXT_MODEL:
        return T.train_wordpiece_tokenizer(corpus, cfg.vocab_size, cfg.context_length)
    return T.pretrained_tokenizer(cfg.text_model)


def build_model(
    cfg: VolumeModelConfig, phenotypes: list[str], tokenizer: PreTrainedTokenizerBase, pretrained_text: bool = True
) -> VolumeCLIP:
    """A fresh model (initialised from the global RNG: seed it first for a reproducible init)."""
    if cfg.text_model == T.DEMO_TEXT_MODEL:
        hf_cfg = T.demo_bert_config(len(tokenizer), cfg.text_hidden, cfg.text_layers, cfg.text_heads, cfg.context_length)
        text = T.text_encoder_from_config(hf_cfg)
    elif pretrained_text:
        text = T.text_encoder_from_pretrained(cfg.text_model)
    else:
        raise ValueError("a non-demo text model without pretrained weights: use load_model_dir")
    return VolumeCLIP(cfg, len(phenotypes), text)


def save_model_dir(
    model: VolumeCLIP, phenotypes: list[str], tokenizer: PreTrainedTokenizerBase, out: Path, extra: Optional[dict[str, Any]] = None
) -> None:
    """Write config.json, model.safetensors, tokenizer/ and text_config/ into `out` (which must exist)."""
    out = Path(out)
    (out / CONFIG_FILE).write_text(json.dumps({"model": asdict(model.cfg), "phenotypes": list(phenotypes),
                                               **(extra or {})}, indent=2))
    save_model(model, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
    model.text.hf.config.save_pretrained(str(out / TEXT_CONFIG_DIR))


def write_model_dir(
    model: VolumeCLIP, phenotypes: list[str], tokenizer: PreTrainedTokenizerBase, out: Path, extra: Optional[dict[str, Any]] = None
) -> None:
    """Like save_model_dir, but into an existing folder that may hold an older model.

    Each file is replaced atomically, weights last, so their presence means the folder is complete.
    """
    out = Path(out)
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model_dir(model, phenotypes, tokenizer, tmp, extra)
    for name in (CONFIG_FILE, TOKENIZER_DIR, TEXT_CONFIG_DIR, WEIGHTS_FILE):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    shutil.rmtree(tmp, ignore_errors=True)


def read_config(folder: Path) -> tuple[VolumeModelConfig, list[str], dict[str, Any]]:
    """(model config, phenotypes, the whole config.json) of a model folder."""
    raw = json.loads((Path(folder) / CONFIG_FILE).read_text())
    return VolumeModelConfig(**raw["model"]), list(raw["phenotypes"]), raw


def load_model_dir(folder: str | Path, device: str | torch.device = "cpu", text: bool = True) -> tuple[VolumeCLIP, Any, list[str]]:
    """(model in eval mode, tokenizer, phenotypes) from a folder written by save_model_dir.

    With `text=False` the text encoder stays on disk (a `TextEncoderNotLoaded` in its place, tokenizer
    None): the image encoder, heads and projections load as usual, checked against the weights file
    as strictly, and transformers is not imported. `load_text_encoder` adds the text encoder later.
    """
    folder = Path(folder)
    cfg, phenotypes, _ = read_config(folder)
    cfg.image_weights = None  # the safetensors below hold the trained weights
    weights = str(folder / WEIGHTS_FILE)
    with weights_not_drawn():  # the folder's weights replace them all (a strict load)
        encoder = _text_encoder_of(folder) if text else T.TextEncoderNotLoaded(_text_width(weights))
        model = VolumeCLIP(cfg, len(phenotypes), encoder, init_from_2d=False)
    if text:
        load_model(model, weights, strict=True, device=str(device))
    else:
        missing, unexpected = load_model(model, weights, strict=False, device=str(device))
        stray = [k for k in unexpected if not k.startswith(TEXT_PREFIX)]
        if missing or stray:
            raise RuntimeError(f"{weights} does not match its config.json: missing {missing}, unexpected {stray}")
    tokenizer = T.load_tokenizer(folder / TOKENIZER_DIR) if text else None
    return model.to(device).eval(), tokenizer, phenotypes


def prompt_texts(prompts: dict[str, dict[str, list[str]]]) -> list[str]:
    """The texts of finding prompts ({finding: {"positive": [...], "negative": [...]}}), finding by finding, positives first."""
    return [t for p in prompts.values() for t in (*p["positive"], *p["negative"])]


@torch.no_grad()
def embed_texts(model: VolumeCLIP, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                device: str | torch.device = "cpu") -> np.ndarray:
    """L2-normalised report embeddings (n, embed_dim) of `texts`, float32 on the CPU."""
    tokens = T.tokenize(tokenizer, list(texts), model.cfg.context_length)
    return model.encode_text(**{k: v.to(device) for k, v in tokens.items()}).float().cpu().numpy()


def text_identity(folder: Path, weights_fingerprint: str) -> str:
    """What a text's embedding by this folder's model depends on: the weights, the tokenizer's files and the context length.

    `weights_fingerprint` is the first 16 hex digits of the weights file's sha256 (what
    `pipelines.infer.cache.weights_fingerprint` gives, remembered across processes).
    """
    folder = Path(folder)
    tokenizer = {p.name: file_digest(p, WEIGHTS_ALGORITHM) for p in sorted((folder / TOKENIZER_DIR).iterdir()) if p.is_file()}
    return json.dumps({"weights": weights_fingerprint, "tokenizer": tokenizer,
                       "context_length": read_config(folder)[0].context_length}, sort_keys=True)


def save_prompt_embeddings(folder: str | Path, texts: list[str], embeddings: np.ndarray) -> None:
    """Write PROMPTS_FILE into a model folder: `texts` and their `embeddings` by its model, and what they were made with.

    `text_identity` (the weights, the tokenizer's files, the context length) is kept in the file's
    metadata, so `load_prompt_embeddings` can tell embeddings made by other weights (a folder whose
    model was replaced) from the folder's own.
    """
    from pipelines.io.tensor_files import save_tensors

    folder = Path(folder)
    fingerprint = file_digest(folder / WEIGHTS_FILE, WEIGHTS_ALGORITHM)[:16]  # weights_fingerprint's value, without its store
    save_tensors({"embeddings": np.asarray(embeddings, np.float32)}, folder / PROMPTS_FILE,
                 metadata={"texts": json.dumps(list(texts)), "made_with": text_identity(folder, fingerprint)})


def load_prompt_embeddings(folder: str | Path, weights_fingerprint: str) -> dict[str, np.ndarray]:
    """{text: embedding} of a model folder's PROMPTS_FILE, its prompts embedded when it was written.

    {} when there is none, it cannot be read, or it was made with other weights, tokenizer or context
    length than the folder's now (`weights_fingerprint`: as for `text_identity`).
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    try:
        with safe_open(str(folder / PROMPTS_FILE), framework="np") as f:
            meta, embeddings = f.metadata() or {}, f.get_tensor("embeddings")
        texts = json.loads(meta["texts"])
        if meta["made_with"] != text_identity(folder, weights_fingerprint) or len(texts) != len(embeddings):
            return {}
    except (OSError, SafetensorError, ValueError, KeyError):
        return {}
    return dict(zip(texts, embeddings))


def load_text_encoder(model: VolumeCLIP, folder: str | Path, device: str | torch.device = "cpu") -> Any:
    """Put the folder's text encoder (strictly, its weights only) into a model `load_model_dir(text=False)` read; returns the tokenizer."""
    from safetensors import safe_open

    folder = Path(folder)
    with weights_not_drawn():
        encoder = _text_encoder_of(folder)
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt", device=str(device)) as f:
        state = {k[len(TEXT_PREFIX):]: f.get_tensor(k) for k in f.keys() if k.startswith(TEXT_PREFIX)}
    encoder.load_state_dict(state, strict=True)
    model.text = encoder.to(device).eval()
    return T.load_tokenizer(folder / TOKENIZER_DIR)


def _text_encoder_of(folder: Path) -> T.TextEncoder:
    """The folder's text encoder, built from its text_config/ (weights not loaded)."""
    from transformers import AutoConfig

    return T.text_encoder_from_config(AutoConfig.from_pretrained(str(folder / TEXT_CONFIG_DIR), local_files_only=True))


def _text_width(weights: str) -> int:
    """The text encoder's width, read from the shape of the text projection in the weights file."""
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as f:
        return int(f.get_slice("text_proj.weight").get_shape()[1])


def activation_bytes(module: nn.Module, volume_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """Bytes of every leaf module's output for one forward pass (a proxy for saved activations).

    "all": sum over leaf outputs (what autograd keeps without checkpointing, roughly);
    "stage_inputs": only the tensors kept when the ResNet stages are checkpointed (stem outputs
    and each stage's output), "max_stage": the largest single stage's leaf outputs (recomputed
    in backward, so alive once at a time).
    """
    totals: dict[str, int] = {"all": 0}
    per_stage: dict[int, int] = {}
    hooks = []
    current = {"stage": -1}

    def leaf_hook(_m: nn.Module, _i: tuple[Any, ...], out: object) -> None:
        if isinstance(out, torch.Tensor):
            n = out.numel() * out.element_size()
            totals["all"] += n
            if current["stage"] >= 0:
                per_stage[current["stage"]] = per_stage.get(current["stage"], 0) + n

    for m in module.modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(leaf_hook))
    stage_out = {"bytes": 0}
    if isinstance(module, I3DResNet):
        for i, stage in enumerate(module.stages):
            hooks.append(stage.register_forward_pre_hook(lambda _m, _i, i=i: current.__setitem__("stage", i)))
            hooks.append(stage.register_forward_hook(
                lambda _m, _i, out: stage_out.__setitem__("bytes", stage_out["bytes"] + out.numel() * out.element_size())))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            module.eval()(torch.zeros(volume_shape))
    finally:
        for h in hooks:
            h.remove()
    stem = totals["all"] - sum(per_stage.values())
    totals["stage_inputs"] = stem + stage_out["bytes"]
    totals["max_stage"] = max(per_stage.values(), default=0)
    return totals
