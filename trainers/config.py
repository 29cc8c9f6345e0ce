"""A training run's configuration: what `jobs.train` takes, what a checkpoint keeps, and what a resume may change."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from .data import ExampleConfig
from .models import MODELS


@dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults follow TSN where it has one (SGD, 3 segments, 5 flows per snippet)."""

    data: str  # a preprocessed dataset (jobs.preprocess --out), a local path or URI
    model: str  # tsn_rgb | tsn_flow | i3d_rgb | i3d_flow
    out: str  # the run folder (a local path or URI): checkpoint.pt, metrics.csv, config.json
    backbone: str = "resnet18"  # TSN: resnet18 or resnet50
    flow_modality: str = "tvl1"  # which flow the *_flow models read: tvl1 or warp_tvl1
    epochs: int = 20
    batch_size: int = 16
    lr: float = 0.01
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | step (x0.1 at each of step_epochs)
    step_epochs: tuple[int, ...] = ()
    warmup_epochs: float = 1.0
    clip_grad: float | None = 40.0  # max gradient norm (TSN: 40 RGB, 20 flow); None = off
    dropout: float = 0.5
    segments: int = 3
    new_length: int = 5
    clip_len: int = 16
    interval: int = 2
    input_size: int = 224
    flip: bool = True
    pretrained: str | None = None  # a 2D ImageNet state dict (torchvision names; a path or URI); nothing is downloaded
    loader_workers: int = 2
    decode_on_device: bool = False  # decode the JPEGs in this process on the training device (nvJPEG), not in the workers
    use_gpu: bool = False
    amp: bool = True  # mixed precision, on a GPU only
    seed: int = 0
    print_freq: int = 10
    split: str = "train"
    eval_every: int = 0  # validate every K epochs and after the last one (0 = never); best.pt keeps the best
    eval_split: str | None = None  # the split validated on; None = "val" where the dataset has one, else "test"
    eval_segments: int = 5  # TSN segments (I3D clips) per video when validating, centre crop (jobs.evaluate: 25 x 10 crops)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be cosine or step, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch size must be at least 1 and lr positive")
        if self.schedule == "step" and not self.step_epochs:
            raise ValueError("--schedule step needs --step-epochs, the epochs where the lr drops x0.1 (e.g. --step-epochs 30 60)")
        if self.eval_every < 0 or self.eval_segments < 1:
            raise ValueError(f"--eval-every must be 0 or more and --eval-segments at least 1, got {self.eval_every}, {self.eval_segments}")

    @property
    def arch(self) -> str:
        """tsn or i3d, from the model name."""
        return self.model.split("_")[0]

    @property
    def modality(self) -> str:
        """rgb, or the flow modality the *_flow models read."""
        return "rgb" if self.model.endswith("_rgb") else self.flow_modality

    def example_config(self, crops: int = 1, segments: int | None = None, clips: int = 1) -> ExampleConfig:
        """How this run's model turns a video into an input (test-time crops, segments, clips as given)."""
        return ExampleConfig(
            arch=self.arch,
            modality=self.modality,
            segments=segments or self.segments,
            new_length=self.new_length,
            clip_len=self.clip_len,
            interval=self.interval,
            clips=clips,
            input_size=self.input_size,
            crops=crops,
            flip=self.flip,
        )


# What a resumed run may change: where its data and run folder are, how it runs (loader workers, device, mixed
# precision, printing), when and how it validates, and --epochs (raised, to extend the run). Every other setting
# shapes the model or its training recipe; --pretrained only matters before the first checkpoint.
RUNTIME_FIELDS = (
    "data",
    "out",
    "epochs",
    "loader_workers",
    "decode_on_device",
    "use_gpu",
    "amp",
    "print_freq",
    "eval_every",
    "eval_split",
    "eval_segments",
)


def resumed_config(cfg: TrainConfig, saved: TrainConfig) -> TrainConfig:
    """The configuration a run resumes with: the saved run's recipe with this invocation's runtime settings (so
    config.json keeps saying how the run was trained).

    Raises:
        ValueError: a recipe setting differs from the run's (each change named, with the ways out).
    """
    changes = [
        f"{f.name} {getattr(saved, f.name)!r} -> {getattr(cfg, f.name)!r}"
        for f in dataclasses.fields(TrainConfig)
        if f.name not in (*RUNTIME_FIELDS, "pretrained") and getattr(cfg, f.name) != getattr(saved, f.name)
    ]
    if changes:
        raise ValueError(
            f"{cfg.out} holds a run trained with other settings ({', '.join(changes)}); to resume it, pass the settings "
            "of its config.json (--epochs may be raised to extend it), or train into another --out"
        )
    return replace(saved, **{name: getattr(cfg, name) for name in RUNTIME_FIELDS})


def config_from_checkpoint(state: dict) -> TrainConfig:
    """The TrainConfig a checkpoint was trained with (fields of older versions ignored, new ones defaulted)."""
    raw = dict(state["config"])
    raw["step_epochs"] = tuple(raw.get("step_epochs", ()))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in raw.items() if k in known})
