"""Frame features of one shard's videos at video.fps: (clips, feat_crop, D), padded by tiling and centre-cropped."""
import torch

from i2a.backbones import build_backbone
from i2a.dataset import Shard, write_tsv
from i2a.features import extract_features
from i2a.jobs import start_job

log = start_job(snakemake)
spec, frames = snakemake.params.backbone, snakemake.params.frames
backbone = build_backbone(spec["name"], weights=spec["weights"], cache_dir="resources/weights",
                          image_size=spec["image_size"])
shard = Shard(snakemake.input.clips)
extract_features(backbone, shard.video_paths(), snakemake.output.features, fps=frames["fps"],
                 total=frames["total"], crop=frames["crop"], dtype=snakemake.params.dtype,
                 batch_size=snakemake.config["backbones"][spec["name"]]["batch_size"],
                 num_workers=snakemake.threads, device="cuda" if torch.cuda.is_available() else "cpu")
write_tsv(shard.ok[["clip", "class"]], snakemake.output.index)  # row i of the .npy is this table's row i
log.info("%d clips -> %s", len(shard.clips), snakemake.output.features)
