"""Melception: the spectrogram classifier whose features FID / MKL are computed on (design.md §7).

torchvision's Inception-v3 topology with a 1-channel stem and maxpool1 / maxpool2 removed (a mel spectrogram is
only 80 bins high), as in SpecVQGAN's `evaluation/feature_extractors/melception.py`. At `width=1` the state-dict
keys and shapes equal torchvision's Inception3 (AuxLogits included), so the released VGGSound checkpoint loads
as is. A `width` multiplier scales every branch so a small Melception can be trained for the laptop demo on the
demo's own classes; such checkpoints carry their config, class names and per-mel-bin standardisation stats.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from i2a.infra.checkpoint import load_checkpoint
from i2a.spec.released import how_to_fetch

log = logging.getLogger(__name__)

N_MELS = 80
CKPT_FORMAT = "i2a-melception-v1"  # marks checkpoints written by i2a.training.melception
MIN_FRAMES = 23  # narrowest input the strided stem / Mixed_6a / Mixed_7a reductions accept


@dataclass
class MelceptionConfig:
    num_classes: int = 309  # VGGSound
    width: float = 1.0  # multiplier on every conv's output channels; 1.0 = the released model
    dropout: float = 0.5  # before fc, active in training only (torchvision's default)


def _ch(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps 1e-3) + ReLU; the `conv` / `bn` names match torchvision."""

    def __init__(self, c_in: int, c_out: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int, w: float) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, _ch(64, w), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, _ch(48, w), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(_ch(48, w), _ch(64, w), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, _ch(64, w), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(_ch(64, w), _ch(96, w), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(_ch(96, w), _ch(96, w), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, _ch(pool_features, w), kernel_size=1)
        self.out_channels = _ch(64, w) + _ch(64, w) + _ch(96, w) + _ch(pool_features, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (in torchvision's terms)."""

    def __init__(self, c_in: int, w: float) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, _ch(384, w), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, _ch(64, w), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(_ch(64, w), _ch(96, w), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(_ch(96, w), _ch(96, w), kernel_size=3, stride=2)
        self.out_channels = _ch(384, w) + _ch(96, w) + c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """Factorised 7x7 convolutions."""

    def __init__(self, c_in: int, channels_7x7: int, w: float) -> None:
        super().__init__()
        c7, c192 = _ch(channels_7x7, w), _ch(192, w)
        self.branch1x1 = BasicConv2d(c_in, c192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, c192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, c192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, c192, kernel_size=1)
        self.out_channels = 4 * c192

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = conv(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (in torchvision's terms)."""

    def __init__(self, c_in: int, w: float) -> None:
        super().__init__()
        c192 = _ch(192, w)
        self.branch3x3_1 = BasicConv2d(c_in, c192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(c192, _ch(320, w), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, c192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(c192, c192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(c192, c192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(c192, c192, kernel_size=3, stride=2)
        self.out_channels = _ch(320, w) + c192 + c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """Expanded filter bank (split 1x3 / 3x1 outputs concatenated)."""

    def __init__(self, c_in: int, w: float) -> None:
        super().__init__()
        c384 = _ch(384, w)
        self.branch1x1 = BasicConv2d(c_in, _ch(320, w), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, c384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(c384, c384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(c384, c384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, _ch(448, w), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(_ch(448, w), c384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(c384, c384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(c384, c384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, _ch(192, w), kernel_size=1)
        self.out_channels = _ch(320, w) + 4 * c384 + _ch(192, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):
    """Auxiliary head. Kept so the released weights load; SpecVQGAN's training discarded its loss, and no
    Melception output uses it, so `Melception.forward` never runs it (see `aux_logits`)."""

    def __init__(self, c_in: int, num_classes: int, w: float) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(c_in, _ch(128, w), kernel_size=1)
        self.conv1 = BasicConv2d(_ch(128, w), _ch(768, w), kernel_size=5)
        # torchvision tags conv1 with stddev 0.01, but on the BasicConv2d, which its init loop never reads: 0.1
        self.fc = nn.Linear(_ch(768, w), num_classes)
        self.fc.stddev = 0.001

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)
        x = self.conv1(self.conv0(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Melception(nn.Module):
    """Inception-v3 over a (B, 80, T) standardised mel spectrogram; no max pools in the stem."""

    def __init__(self, config: MelceptionConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MelceptionConfig()
        w = config.width
        self.Conv2d_1a_3x3 = BasicConv2d(1, _ch(32, w), kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(_ch(32, w), _ch(32, w), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(_ch(32, w), _ch(64, w), kernel_size=3, padding=1)
        # maxpool1 removed (SpecVQGAN sets it to Identity)
        self.Conv2d_3b_1x1 = BasicConv2d(_ch(64, w), _ch(80, w), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(_ch(80, w), _ch(192, w), kernel_size=3)
        # maxpool2 removed
        self.Mixed_5b = InceptionA(_ch(192, w), pool_features=32, w=w)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, pool_features=64, w=w)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, pool_features=64, w=w)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, w=w)
        c6 = self.Mixed_6a.out_channels
        self.Mixed_6b = InceptionC(c6, channels_7x7=128, w=w)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, channels_7x7=160, w=w)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, channels_7x7=160, w=w)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, channels_7x7=192, w=w)
        self.AuxLogits = InceptionAux(self.Mixed_6e.out_channels, config.num_classes, w=w)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, w=w)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, w=w)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, w=w)
        self.feature_dim = self.Mixed_7c.out_channels  # 2048 at width 1
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(self.feature_dim, config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's Inception3 init: truncated normal (std 0.1 unless the module says otherwise), BN identity
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=float(getattr(m, "stddev", 0.1)), a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 80, T) -> Mixed_6e output, the input of both heads."""
        if x.dim() != 3 or x.shape[1] != N_MELS:
            raise ValueError(f"Melception expects (B, {N_MELS}, T) mels, got {tuple(x.shape)}")
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"Melception needs at least {MIN_FRAMES} frames, got {x.shape[2]}")
        x = x.unsqueeze(1)
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                     "Mixed_6e"):
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.trunk(x)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        feats = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        # SpecVQGAN: logits_unbiased = feats @ W.T, logits = that + bias (dropout is identity in eval)
        unbiased = self.dropout(feats) @ self.fc.weight.T
        return {"2048": feats, "logits": unbiased + self.fc.bias, "logits_unbiased": unbiased}


# ----------------------------------------------------------------------------------------------------------------
# input standardisation


def read_mel_stats(path: str | Path) -> np.ndarray:
    """(80, 2) per-mel-bin [mean, std] from SpecVQGAN's `train_means_stds_*.txt` (one `mean std` line per bin)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mel stats file {path} not found (SpecVQGAN ships it as "
                                "specvqgan/modules/losses/vggishish/data/train_means_stds_melspec_10s_22050hz.txt)")
    stats = np.loadtxt(path, dtype=np.float64)
    if stats.shape != (N_MELS, 2):
        raise ValueError(f"{path}: expected {N_MELS} lines of 'mean std', got array of shape {stats.shape}")
    return stats


def compute_mel_stats(mels01: np.ndarray) -> np.ndarray:
    """(80, 2) stats as SpecVQGAN's StandardNormalizeAudio computes them: per clip the mean and std over time,
    then each averaged over clips (the mean of per-clip stds, not a pooled std)."""
    mels01 = np.asarray(mels01, dtype=np.float64)
    check_mels(mels01)
    return np.stack([mels01.mean(axis=2).mean(axis=0), mels01.std(axis=2).mean(axis=0)], axis=1)


def standardise(mels01: np.ndarray | torch.Tensor, stats: np.ndarray) -> np.ndarray | torch.Tensor:
    """(x - mean) / std per mel bin for (80, T) or (B, 80, T) mels in [0, 1]; keeps numpy / torch type."""
    stats = np.asarray(stats)
    if stats.shape != (N_MELS, 2):
        raise ValueError(f"stats must be ({N_MELS}, 2) [mean, std], got {stats.shape}")
    if mels01.shape[-2] != N_MELS:
        raise ValueError(f"mels must have {N_MELS} bins on axis -2, got shape {tuple(mels01.shape)}")
    mean, std = stats[:, 0:1], stats[:, 1:2]
    if isinstance(mels01, torch.Tensor):  # in float64 like the numpy path, so both give the same floats
        mean_t = torch.as_tensor(mean, dtype=torch.float64, device=mels01.device)
        std_t = torch.as_tensor(std, dtype=torch.float64, device=mels01.device)
        return ((mels01.double() - mean_t) / std_t).to(mels01.dtype)
    return ((np.asarray(mels01, dtype=np.float64) - mean) / std).astype(np.float32)


def check_mels(mels: np.ndarray) -> None:
    if mels.ndim != 3 or mels.shape[1] != N_MELS:
        raise ValueError(f"expected (N, {N_MELS}, T) mels, got shape {mels.shape}")


# ----------------------------------------------------------------------------------------------------------------
# loading


def _numpy_scalar_globals() -> list:
    """The released file also stores its validation metrics, some as numpy float64 scalars (pickled in 2021 as
    numpy.core.multiarray.scalar + numpy.dtype). Allowlisting exactly these keeps `weights_only=True` loading."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    globs: list = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    globs += [getattr(np.dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                              "BoolDType") if hasattr(np, "dtypes") and hasattr(np.dtypes, n)]
    return globs


def load_melception(path: str | Path, stats_path: str | Path | None = None,
                    device: str | torch.device = "cpu") -> tuple[Melception, np.ndarray | None]:
    """(model in eval mode, (80, 2) stats) from either checkpoint kind.

    - SpecVQGAN's released file (`{'model': state_dict}`, VGGSound, 309 classes): its stats are not inside;
      pass `stats_path` (data/train_means_stds_melspec_10s_22050hz.txt) to get them, else stats is None.
    - a checkpoint written by `train_melception`: config, stats and class names come from the file.
    `model.class_names` holds the class names when known (None for the released model).
    """
    ckpt = load_checkpoint(path, "Melception checkpoint", "fetch the released VGGSound Melception "
                           f"({how_to_fetch('melception')}), or train one on the dataset's classes (melception.source: "
                           "train)", safe_globals=_numpy_scalar_globals())
    if "model" not in ckpt:
        raise ValueError(f"{path}: not a Melception checkpoint (expected a dict with a 'model' state dict)")
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    if ckpt.get("format") == CKPT_FORMAT:
        config = MelceptionConfig(**ckpt["config"])
        stats = ckpt["stats"].double().numpy()
        class_names = list(ckpt["class_names"])
    else:  # the released file: infer the size from the weights (width 1 unless someone scaled it)
        if "fc.weight" not in state:
            raise ValueError(f"{path}: state dict has no 'fc.weight'; not an Inception3-style Melception")
        config = MelceptionConfig(num_classes=state["fc.weight"].shape[0], width=state["fc.weight"].shape[1] / 2048)
        stats = None
        class_names = None
    if stats_path is not None:
        stats = read_mel_stats(stats_path)
    model = Melception(config)
    model.load_state_dict(state)
    model.class_names = class_names
    return model.to(device).eval(), stats


# ----------------------------------------------------------------------------------------------------------------
# inference for the workflow


@torch.inference_mode()
def melception_outputs(model: Melception, mels01: np.ndarray | torch.Tensor, stats: np.ndarray,
                       batch_size: int = 16, device: str | torch.device | None = None) -> dict[str, np.ndarray]:
    """{'2048': (N, D), 'logits': (N, C), 'logits_unbiased': (N, C)} float32 for (N, 80, T) mels in [0, 1].

    A numpy array (a memory map is fine) is converted one batch at a time, so the mels are never all in memory.
    Generated mels may stray slightly outside [0, 1] (SpecVQGAN does not clip them before evaluation either)."""
    if stats is None:
        raise ValueError("stats is None: pass the per-bin mean/std the Melception was trained with "
                         "(read_mel_stats(data/train_means_stds_melspec_10s_22050hz.txt) for the released model)")
    if not torch.is_tensor(mels01):
        mels01 = np.asanyarray(mels01)
    check_mels(mels01)
    if len(mels01) == 0:
        raise ValueError("no mels given")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    n = len(mels01)
    outs: dict[str, list[np.ndarray]] = {"2048": [], "logits": [], "logits_unbiased": []}
    n_batches = math.ceil(n / batch_size)
    log_every = max(1, n_batches // 10)
    t0 = time.time()
    for b, start in enumerate(range(0, n, batch_size)):
        batch = mels01[start:start + batch_size]
        batch = batch.float() if torch.is_tensor(batch) else torch.from_numpy(np.asarray(batch, dtype=np.float32))
        x = standardise(batch, stats).to(device)
        for k, v in model(x).items():
            outs[k].append(v.float().cpu().numpy())
        if (b + 1) % log_every == 0 or b + 1 == n_batches:
            log.info("melception: %d/%d clips (%.1fs)", min(start + batch_size, n), n, time.time() - t0)
    return {k: np.concatenate(v, axis=0) for k, v in outs.items()}
