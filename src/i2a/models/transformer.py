"""A transformer loaded to be sampled: its GPT with the run that trained it, the codebook it was trained on and
the feature statistics it reads its condition with (design.md §5), from a checkpoint `i2a.training.gpt` wrote
(which describes itself), a released SpecVQGAN one, or a bare state dict."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from i2a.infra.checkpoint import CheckpointError, load_checkpoint
from i2a.models.condition import check_feature_stats, standardize
from i2a.models.gpt import GPT, sample_tokens
from i2a.spec.backbones import feature_dim
from i2a.spec.released import how_to_fetch, released
from i2a.spec.runspec import GPTConfig, RunSpec

log = logging.getLogger(__name__)

CKPT_FORMAT = "i2a-gpt-v1"  # what i2a.training.gpt writes: weights + the run's RunSpec + its codebook


@dataclass
class LoadedTransformer:
    """A GPT and what sampling it as it was trained needs.

    `spec` is the run that trained it (a released one: its registry entry's; None for a bare state dict, read as
    raw features), `codebook_fingerprint` the codebook it was trained on (`i2a.models.codebook.codebook_fingerprint`;
    None when unknown), `feature_stats` the training split's per-dimension mean and std, present exactly when the
    run says `feature_norm: standard`."""

    gpt: GPT
    spec: RunSpec | None
    codebook_fingerprint: dict[str, Any] | None = None
    feature_stats: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        check_feature_stats(self.feature_norm, self.feature_stats, f"transformer {self.name}")

    @property
    def name(self) -> str:
        return self.spec.name if self.spec is not None else "(a bare state dict)"

    @property
    def feature_norm(self) -> str:
        return "raw" if self.spec is None else self.spec.feature_norm

    @property
    def S(self) -> int:
        """Feature frames it reads (the run's; a bare state dict's from its block size is not knowable)."""
        if self.spec is None:
            raise ValueError("a bare state dict does not say how many feature frames it reads: give the run")
        return self.spec.feat_sample_size

    @property
    def n_tokens(self) -> int:
        return self.gpt.block_size - self.S

    def condition(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, D, S) features as extracted -> as the transformer read them in training, on its device."""
        feats = feats.to(device=self.gpt.pos_emb.device, dtype=self.gpt.pos_emb.dtype)
        if self.feature_norm != "standard":
            return feats
        stats = {k: v.to(feats.device) for k, v in self.feature_stats.items()}
        return standardize(feats, stats["mean"], stats["std"])

    def sample(self, feats: torch.Tensor, n_tokens: int, **kwargs: Any) -> torch.Tensor:
        """`sample_tokens` on features as extracted (standardised here when the run was trained so)."""
        return sample_tokens(self.gpt, self.condition(feats), n_tokens, **kwargs)


def _shape_config(sd: dict[str, torch.Tensor], heads: int) -> GPTConfig:
    """The transformer's sizes from its weight shapes; the head count is not in them."""
    vocab, embed = sd["tok_emb.weight"].shape
    return GPTConfig(vocab_size=vocab, block_size=sd["pos_emb"].shape[1],
                     layers=1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.")), heads=heads,
                     embed=embed, feat_dim=sd["embedder.weight"].shape[1])


def _check_shapes(path: Path, sd: dict[str, torch.Tensor], cfg: GPTConfig) -> None:
    found = _shape_config(sd, cfg.heads)
    differences = [f"{f}: the checkpoint has {getattr(found, f)}, the run says {getattr(cfg, f)}"
                   for f in ("vocab_size", "block_size", "layers", "embed", "feat_dim")
                   if getattr(found, f) != getattr(cfg, f)]
    if differences:
        raise CheckpointError(f"{path} does not fit the run's transformer: " + "; ".join(differences))


def load_transformer(path: str | Path, cfg: GPTConfig | None = None,
                     map_location: str | torch.device = "cpu") -> LoadedTransformer:
    """A GPT in eval mode (fp32) from a checkpoint written by `i2a.training.gpt` (self-describing: its RunSpec,
    codebook fingerprint and feature statistics come with it), from a SpecVQGAN Lightning checkpoint
    (`transformer.*` keys; `first_stage_model.*` etc. ignored) or from a bare GPT state dict.

    `cfg` is what the caller expects: a self-describing checkpoint must agree with it; a SpecVQGAN one takes its
    head count from it (the weights do not say) after its shapes were checked against it (16 heads, SpecVQGAN's,
    are assumed without a cfg, with a warning).
    """
    ckpt = load_checkpoint(path, "transformer checkpoint", "train one (the workflow's train_gpt rule) or fetch a "
                           "released SpecVQGAN VAS transformer (a run with source: released; the fetch_checkpoint "
                           "rule)", map_location=map_location)
    sd = ckpt.get("state_dict", ckpt)
    if any(k.startswith("transformer.") for k in sd):
        sd = {k[len("transformer."):]: v for k, v in sd.items() if k.startswith("transformer.")}
    if "tok_emb.weight" not in sd:
        raise CheckpointError(f"{path} holds no GPT weights (no 'transformer.tok_emb.weight' or 'tok_emb.weight')")
    run_spec = None
    if ckpt.get("format") == CKPT_FORMAT:
        run_spec = RunSpec.from_dict(ckpt["run_spec"])
        if cfg is not None and cfg != run_spec.model:
            raise CheckpointError(f"{path} was trained as {run_spec.model}, not {cfg}")
        cfg = run_spec.model
    elif cfg is None:
        cfg = _shape_config(sd, heads=GPTConfig().heads)
        log.warning("%s does not describe itself: inferred %s (SpecVQGAN's %d heads assumed)", path, cfg, cfg.heads)
    _check_shapes(Path(path), sd, cfg)
    model = GPT(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    stats = ckpt.get("feature_stats")  # features standardised in training are standardised the same way here
    stats = None if stats is None else {k: v.float().to(map_location) for k, v in stats.items()}
    return LoadedTransformer(model.to(map_location).eval(), run_spec, ckpt.get("codebook"), stats)


def released_config(name: str, vocab_size: int, n_tokens: int) -> GPTConfig:
    """A released SpecVQGAN transformer's shape. Layers, heads, width and S are what the fetched checkpoint's own
    config says (else the registry of released files: the weights do not tell the head count), the feature depth
    is its backbone's, and the vocabulary and token count are the codebook's it is used with, never a config's
    `codebook.model`."""
    entry = released(name)
    if entry.kind != "transformer":
        raise ValueError(f"{name!r} is a released {entry.kind}, not a transformer")
    shape = entry.shape()
    return GPTConfig(vocab_size=vocab_size, block_size=n_tokens + shape["feat_sample_size"], layers=shape["layers"],
                     heads=shape["heads"], embed=shape["embed"], feat_dim=feature_dim(shape["features"]), dropout=0.0)


def load_released_transformer(name: str, vocab_size: int, n_tokens: int, path: str | Path | None = None,
                              map_location: str | torch.device = "cpu") -> LoadedTransformer:
    """One of the authors' VAS transformers (`i2a.spec.released`), described like a trained one: its spec says
    its backbone, S and shape (from the registry, checked against the weights)."""
    entry = released(name)
    path = Path(path or entry.local_path)
    if not path.is_file():
        raise FileNotFoundError(f"released transformer {name} not found at {path}: fetch it with {how_to_fetch(name)}")
    cfg = released_config(name, vocab_size, n_tokens)
    shape = entry.shape()
    loaded = load_transformer(path, cfg, map_location=map_location)
    loaded.spec = RunSpec(name=name, features=shape["features"], feat_sample_size=shape["feat_sample_size"],
                          source="released", released=name, model=cfg)
    return loaded
