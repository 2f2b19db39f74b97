"""The volume family's task: Merlin's phenotype supervision (BCE) plus report contrastive (InfoNCE).

Schedules (`<domain>.adapt.schedule`):
* "staged": phenotype loss only for the first `stage1_steps` steps (or `stage1_epochs` epochs),
  then `contrastive_weight * InfoNCE + phenotype_weight * BCE`;
* "multitask": the weighted sum from the first step.

The data is map-style (pipelines/io/volume_shards.py): epoch e's order is a seeded permutation,
global micro-batch k is perm[k*B*W:(k+1)*B*W] and rank r takes its r-th slice, so W ranks x B see
what 1 rank x W*B sees. BatchNorm is the exception on CPU/gloo: each rank normalises by its own
slice, so those runs agree only approximately (the loop uses SyncBatchNorm on CUDA).

Report-splitting augmentation: each sample's text per epoch is the full findings or one organ
section (`choose_text`), seeded by (seed, epoch, key). Checkpoints hold the full state dict
(BatchNorm running statistics are buffers, not parameters).
"""
from __future__ import annotations

import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

import torch
import torch.nn.functional as F

from pipelines.io.volume_shards import ShardIndex, VolumeSample, read_phenotypes, split_index
from pipelines.models import volume as M
from pipelines.models.report_text import load_tokenizer, tokenize
from pipelines.train import distributed as D
from pipelines.train.loop import Precision, TrainConfig
from pipelines.train.loss import make_loss
from pipelines.train.seeds import stable_seed
from pipelines.train.task import LOSS_PREFIX, Progress, TrainingTask, full_precision


@dataclass
class VolumeAdaptConfig:
    """params.yaml `<domain>.adapt` of a volume domain: what is learned (objectives and schedule)."""

    schedule: Literal["staged", "multitask"] = "staged"
    stage1_steps: Optional[int] = None   # staged: phenotype-only steps; None -> stage1_epochs
    stage1_epochs: int = 1
    phenotype_weight: float = 1.0
    contrastive_weight: float = 1.0
    loss: Literal["clip", "siglip"] = "clip"  # contrastive loss of pipelines/train/loss.py
    full_report_prob: float = 0.5        # report splitting: P(full findings), else one organ section


@dataclass
class VolumeTrainConfig(TrainConfig):
    """params.yaml `<domain>.train` of a volume domain; defaults are the real setting (one 48 GB GPU)."""

    batch_size: int = 8
    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    precision: Precision = "auto"  # bf16 on the GPU
    grad_checkpointing: bool = True
    checkpoint_every: int = 200


def choose_text(sample: VolumeSample, seed: int, epoch: int, full_report_prob: float = 0.5) -> str:
    """The full findings with probability `full_report_prob`, else one organ section; seeded per sample/epoch."""
    choices = sample.text_choices()
    rng = random.Random(stable_seed("text", seed, epoch, sample.key))
    if len(choices) == 1 or rng.random() < full_report_prob:
        return choices[0]
    return rng.choice(choices[1:])


def fit_tokenizer(cfg: M.VolumeModelConfig, index: ShardIndex) -> Any:
    """The report tokenizer fitted to the train split.

    It is deterministic, so every rank and every rerun builds the same one, and nothing is written
    before the model folder itself.
    """
    tokenizer = M.new_tokenizer(cfg, index.reports())
    with tempfile.TemporaryDirectory() as tmp:  # as saved and read back with the model
        tokenizer.save_pretrained(tmp)
        return load_tokenizer(tmp)


class VolumeTask(TrainingTask):
    """Phenotype and contrastive training of the 3D dual encoder on curated volume shards."""

    def __init__(self, model: M.VolumeCLIP, tokenizer: Any, phenotypes: list[str], index: ShardIndex,
                 adapt: VolumeAdaptConfig, train_config: dict[str, Any], info: D.DistInfo) -> None:
        super().__init__(model, make_loss(adapt.loss, info.rank, info.world_size))
        self.tokenizer, self.phenotypes, self.index, self.adapt = tokenizer, phenotypes, index, adapt
        self.train_config = train_config  # recorded in the model folder
        # phase 1 of "staged" leaves the text tower unused
        self.may_leave_parameters_unused = adapt.schedule == "staged"

    @classmethod
    def build(cls, data: Path, model_cfg: M.VolumeModelConfig, adapt: VolumeAdaptConfig, cfg: TrainConfig,
              info: D.DistInfo) -> "VolumeTask":
        """Index DATA's train split, fit the tokenizer, then build the model from `cfg.seed`."""
        index = split_index(data, "train")
        if len(index) == 0:
            raise FileNotFoundError(f"no train samples under {data}/shards (run `domainfm curate` first)")
        phenotypes = read_phenotypes(data)
        tokenizer = fit_tokenizer(model_cfg, index)
        torch.manual_seed(cfg.seed)  # the initial weights are a function of the seed (evaluate's "base" relies on it)
        model = M.build_model(model_cfg, phenotypes, tokenizer)
        return cls(model, tokenizer, phenotypes, index, adapt, {**asdict(adapt), **asdict(cfg)}, info)

    def num_samples(self) -> int:
        """Curated train studies."""
        return len(self.index)

    def batches(self, *, epoch: int, skip: int, batch_size: int, multiple_of: int, seed: int, rank: int,
                world_size: int) -> Iterator[dict[str, Any]]:
        """This rank's slice of each global micro-batch of a seeded per-epoch permutation."""
        g = torch.Generator().manual_seed(stable_seed("order", seed, epoch))
        perm = torch.randperm(len(self.index), generator=g).tolist()
        per_micro = batch_size * world_size
        n_micro = len(self.index) // (per_micro * multiple_of) * multiple_of
        for k in range(skip, n_micro):
            start = k * per_micro + rank * batch_size
            samples = [self.index[i] for i in perm[start:start + batch_size]]
            texts = [choose_text(s, seed, epoch, self.adapt.full_report_prob) for s in samples]
            yield {"volumes": M.volume_batch(samples, self.model.cfg.input_size),
                   "targets": M.phenotype_targets(samples, self.phenotypes),
                   "tokens": tokenize(self.tokenizer, texts, self.model.cfg.context_length)}

    def stage1_steps(self, progress: Progress) -> int:
        """Phenotype-only steps at the start ("staged"), 0 for "multitask"."""
        if self.adapt.schedule != "staged":
            return 0
        if self.adapt.stage1_steps is not None:
            return self.adapt.stage1_steps
        return self.adapt.stage1_epochs * progress.steps_per_epoch

    def training_forward(self, batch: dict[str, Any], progress: Progress) -> dict[str, torch.Tensor]:
        """Weighted BCE on phenotypes, plus InfoNCE on reports once the contrastive phase starts."""
        contrastive = progress.step >= self.stage1_steps(progress)
        outs = self.model(batch["volumes"], **(batch["tokens"] if contrastive else {}))
        losses: dict[str, torch.Tensor] = {}
        with full_precision(outs["image_features"]):
            if self.phenotypes:
                losses["phenotype"] = self.adapt.phenotype_weight * F.binary_cross_entropy_with_logits(
                    outs["phenotype_logits"].float(), batch["targets"])
            if contrastive:
                losses["contrastive"] = self.adapt.contrastive_weight * self.loss(
                    outs["image_features"].float(), outs["text_features"].float(), outs["logit_scale"].float())
        return losses

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The full state dict (BatchNorm buffers included) plus the loss's parameters."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tensors.update({LOSS_PREFIX + n: p.detach().cpu().contiguous() for n, p in self.loss.named_parameters()})
        return tensors

    def load_checkpoint_tensors(self, saved: dict[str, torch.Tensor], source: str) -> None:
        """Restore the state dict and the loss's parameters (strict)."""
        loss_state = {k[len(LOSS_PREFIX):]: v for k, v in saved.items() if k.startswith(LOSS_PREFIX)}
        model_state = {k: v for k, v in saved.items() if not k.startswith(LOSS_PREFIX)}
        self.model.load_state_dict(model_state, strict=True)
        self.loss.load_state_dict(loss_state, strict=True)

    def save(self, out_dir: Path) -> None:
        """The model folder (config, weights, tokenizer, text config), each file replaced atomically."""
        M.write_model_dir(self.model, self.phenotypes, self.tokenizer, Path(out_dir), {"train": self.train_config})


def phenotype_names(samples: Sequence[VolumeSample]) -> list[str]:
    """Every phenotype id seen in `samples`, sorted (for tests and sanity checks)."""
    return sorted({p for s in samples for p in s.phenotypes})
