"""One run of the study's grid as one typed description: `RunSpec`, built once from a validated config entry.

The names are the config's (`layers`, `heads`, `embed`, `dropout`, `weight_decay`, ...): the same words in
`config/*.yaml`, in these dataclasses, in the transformer (`GPTConfig`) and in the table's columns. Every job
and library function takes a RunSpec or one of its parts, and a GPT checkpoint stores the whole of it, so
whatever reads the checkpoint needs no side channel. Torch-free: planning the DAG builds one per run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from i2a.infra.precision import check_precision, lightning_precision

# SpecVQGAN's (minGPT's) names for the same settings, as its configs and the interop files spell them
_MINGPT_NAMES = {"n_layer": "layers", "n_head": "heads", "n_embd": "embed"}
_MINGPT_DROPOUTS = ("embd_pdrop", "resid_pdrop", "attn_pdrop")
# what checkpoints written before the one precision vocabulary stored: "32" was PyTorch's default arithmetic (fp32
# matmuls, TF32 cuDNN convolutions on a GPU), closest to strict fp32 on the CPU where they were tested
_LEGACY_PRECISIONS = {"32": "fp32", "bf16-mixed": "bf16"}
# the table's rows that are not runs (i2a.evaluation.table): the codebook's ceiling, and each run's control row
# (the run's name + CONTROL_SUFFIX). A run may not take such a name, or its row would be the other's.
CEILING_ROW = "reconstruction"
CONTROL_SUFFIX = "+shuffled"
RESERVED_RUN_NAMES = (CEILING_ROW,)


def _known(cls, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class GPTConfig:
    """The transformer's shape. Defaults: SpecVQGAN's VAS transformer, 24 layers x 16 heads x 1024-d, a block
    of 265 tokens + 212 feature frames, 2048-d (ResNet50) features. One `dropout` for the embedding, the
    residual branches and attention, as the study varied them."""

    vocab_size: int = 128
    block_size: int = 477
    layers: int = 24
    heads: int = 16
    embed: int = 1024
    feat_dim: int = 2048
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.embed % self.heads:
            raise ValueError(f"embed ({self.embed}) must be divisible by heads ({self.heads})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        """Ours, or SpecVQGAN's minGPT names (`n_layer`, `n_embd`, `*_pdrop`); other keys (notes) are ignored."""
        d = {_MINGPT_NAMES.get(k, k): v for k, v in d.items()}
        drops = {d[k] for k in _MINGPT_DROPOUTS if k in d}
        if len(drops) > 1:
            raise ValueError(f"separate dropouts {sorted(drops)} are not supported: one `dropout` for all three")
        if drops and "dropout" not in d:
            d["dropout"] = drops.pop()
        return cls(**_known(cls, d))


@dataclass(frozen=True)
class TrainSettings:
    """How a run's transformer is optimised; SpecVQGAN's VAS recipe by default (design.md §5)."""

    batch: int = 16  # per GPU
    gpus: int = 1  # DDP when > 1
    accumulate: int = 1
    # LR = base_lr x batch x gpus x accumulate; "auto": the LR finder's suggestion, set by `with_base_lr` before
    # training (i2a.training.gpt.resolve_base_lr)
    base_lr: float | str = 1e-6
    weight_decay: float = 0.01  # on Linear weights only
    betas: tuple[float, float] = (0.9, 0.95)
    scheduler: Literal["none", "plateau", "cosine"] = "none"
    plateau_patience: int = 10
    plateau_factor: float = 0.1
    max_epochs: int = 30
    early_stopping: bool = False
    early_stopping_patience: int = 2
    seed: int = 0
    # i2a.infra.precision's vocabulary: "fp32" (strict), "tf32" (SpecVQGAN's A100 arithmetic) or "bf16" (bf16 autocast)
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        precision = _LEGACY_PRECISIONS.get(str(self.precision), str(self.precision))
        object.__setattr__(self, "precision", check_precision(precision))
        if isinstance(self.base_lr, str) and self.base_lr != "auto":
            raise ValueError(f"base_lr must be a number or 'auto', got {self.base_lr!r}")
        if self.scheduler not in ("none", "plateau", "cosine"):
            raise ValueError(f"scheduler must be 'none', 'plateau' or 'cosine', got {self.scheduler!r}")
        for name in ("batch", "gpus", "accumulate", "max_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def learning_rate(self) -> float:
        if self.base_lr == "auto":
            raise ValueError("base_lr is auto: the LR finder's suggestion must be filled in first (with_base_lr)")
        return self.base_lr * self.batch * self.gpus * self.accumulate

    @property
    def lightning_precision(self) -> str:
        return lightning_precision(self.precision)


@dataclass(frozen=True)
class SamplingSettings:
    """Top-k sampling of the validation videos (design.md §5); shared by every run of a config."""

    samples_per_video: int = 10
    top_k: int = 64
    temperature: float = 1.0
    seed: int = 0
    seeds: int = 1  # sampling seeds seed, seed+1, ...: each draws samples_per_video per video
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"  # i2a.infra.precision's vocabulary

    def __post_init__(self) -> None:
        check_precision(self.precision)


@dataclass(frozen=True)
class RunSpec:
    """Everything that decides one run's result."""

    name: str
    features: str  # a backbone of i2a.spec.backbones, or "none" (random features, the no-feats baseline)
    feat_sample_size: int = 212  # S of the 212 frames
    # how features enter the GPT: "raw" as SpecVQGAN feeds them, or "standard": per dimension, minus the mean and
    # over the std of the training split's features (the statistics travel in the checkpoint)
    feature_norm: Literal["raw", "standard"] = "raw"
    source: Literal["train", "released"] = "train"
    released: str | None = None  # with source "released": which of i2a.spec.released's transformers
    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    @property
    def n_tokens(self) -> int:
        return self.model.block_size - self.feat_sample_size

    @classmethod
    def from_config(cls, config: dict[str, Any], entry: dict[str, Any]) -> RunSpec:
        """A validated config (schema defaults filled in) and one of its `runs:` entries."""
        from i2a.spec.backbones import feature_dim

        model = GPTConfig(vocab_size=codebook_size(config), block_size=tokens_per_clip(config) + entry["feat_sample_size"],
                          layers=entry["layers"], heads=entry["heads"], embed=entry["embed"],
                          feat_dim=feature_dim(entry["features"]), dropout=entry["dropout"])
        sampling = _known(SamplingSettings, config["sampling"])
        if entry.get("samples_per_video") is not None:
            sampling["samples_per_video"] = entry["samples_per_video"]
        elif entry["source"] == "released":  # as its published numbers were computed (one place: the registry)
            from i2a.spec.released import released

            published = released(entry["released"]).published
            if published is not None:
                sampling["samples_per_video"] = published.samples_per_video
        return cls(name=entry["name"], features=entry["features"], feat_sample_size=entry["feat_sample_size"],
                   feature_norm=entry["feature_norm"], source=entry["source"], released=entry.get("released"),
                   model=model,
                   train=TrainSettings(**_known(TrainSettings, entry)),
                   sampling=SamplingSettings(**sampling))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"]["betas"] = list(self.train.betas)
        return d

    def training_view(self) -> dict[str, Any]:
        """What changes a trained transformer: all but the sampling settings (a rule's params)."""
        d = self.to_dict()
        del d["sampling"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = dict(d)
        return cls(**{**_known(cls, d), "model": GPTConfig.from_dict(d.get("model", {})),
                      "train": TrainSettings(**_known(TrainSettings, d.get("train", {}))),
                      "sampling": SamplingSettings(**_known(SamplingSettings, d.get("sampling", {})))})

    def with_sampling(self, **changes: Any) -> RunSpec:
        return replace(self, sampling=replace(self.sampling, **changes))

    def with_base_lr(self, base_lr: float) -> RunSpec:
        return replace(self, train=replace(self.train, base_lr=float(base_lr)))


def codebook_size(config: dict[str, Any]) -> int:
    return int(config["codebook"]["model"]["n_embed"])


def codebook_downsampling(config: dict[str, Any]) -> int:
    return 2 ** (len(config["codebook"]["model"]["ch_mult"]) - 1)


def tokens_per_clip(config: dict[str, Any]) -> int:
    """The codebook's token grid for the model's crop: (80 / 16) x (848 / 16) = 5 x 53 = 265 for VAS."""
    f = codebook_downsampling(config)
    return (config["audio"]["n_mels"] // f) * (config["audio"]["crop_frames"] // f)
