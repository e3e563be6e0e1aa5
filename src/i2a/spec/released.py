"""The files the SpecVQGAN authors released (design.md §10), one entry each: where each comes from, its MD5,
what is inside, and for the VAS transformers what they were trained with and what the paper reports for them
(design.md §8). The fetch rule, the loaders' error messages, the config checks and the table's `published_*`
columns read this table. Torch-free: planning reads it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

BASE_URL = "https://a3s.fi/swift/v1/AUTH_a235c0f452d648828f745589cde1219a/specvqgan_public"
CACHE_DIR = "resources/checkpoints"


@dataclass(frozen=True)
class Published:
    """What the paper reports for a model on the 768 VAS validation videos."""

    FID: float
    KL: float
    samples_per_video: int
    source: str


@dataclass(frozen=True)
class ReleasedFile:
    name: str
    kind: str  # codebook | transformer | melgan | melception | melception_stats
    path: str  # under BASE_URL, or a full URL (a file the authors keep elsewhere)
    md5: str | None  # None: the authors publish none (the first download records it)
    suffix: str = "ckpt"  # the local file: resources/checkpoints/<name>.<suffix>
    member: str | None = None  # the checkpoint inside a tar.gz, by file name (None: the single *.ckpt in it)
    # every checkpoint an archive holds (by file name): any of them can be taken instead of `member`
    # (resources/checkpoints/<name>.<member>), and fetching the archive records whether they differ
    members: tuple[str, ...] = ()
    # transformers: what they were trained with (design.md §5), checked against the run that names them
    features: str | None = None
    feat_sample_size: int | None = None
    layers: int | None = None
    heads: int | None = None
    embed: int | None = None
    published: Published | None = None
    description: str = ""

    @property
    def url(self) -> str:
        return self.path if "://" in self.path else f"{BASE_URL}/{self.path}"

    @property
    def local_path(self) -> str:
        return f"{CACHE_DIR}/{self.name}.{self.suffix}"

    def member_path(self, member: str | None) -> str:
        """Where one of an archive's checkpoints is kept: `local_path` for the registry's own (`member`, or None),
        resources/checkpoints/<name>.<member> for another."""
        if member is None or member == self.member:
            return self.local_path
        if member not in self.members:
            raise ValueError(f"{self.name}: no checkpoint {member!r} in {self.path}; it holds "
                             f"{', '.join(self.members) or 'one checkpoint only'}")
        return f"{CACHE_DIR}/{self.name}.{member}"

    @property
    def description_path(self) -> str:
        """Where the fetch job writes what the checkpoint itself says it is (a transformer's shape)."""
        return f"{CACHE_DIR}/{self.name}.json"

    def shape(self) -> dict[str, object]:
        """A transformer's features, S, layers, heads and width: what the fetched checkpoint says (its description
        file, once fetch_checkpoint wrote it), else what this registry says."""
        shape = {"features": self.features, "feat_sample_size": self.feat_sample_size, "layers": self.layers,
                 "heads": self.heads, "embed": self.embed}
        described = Path(self.description_path)
        if described.is_file():
            found = json.loads(described.read_text())
            shape.update({k: found[k] for k in shape if found.get(k) is not None})
        return shape


def _transformer(name: str, stamp: str, md5: str, features: str, S: int, published: Published) -> ReleasedFile:
    return ReleasedFile(name, "transformer", f"models/{stamp}_vas_transformer.tar.gz", md5, features=features,
                        feat_sample_size=S, layers=24, heads=16, embed=1024, published=published,
                        description=f"VAS transformer, {features} x {S} on the VAS codebook")


_RESNET50 = "SpecVQGAN README, ResNet50 features, 10 samples per video"
_BN_INCEPTION = "SpecVQGAN paper, BN-Inception protocol, 100 samples per video"
RELEASED: dict[str, ReleasedFile] = {f.name: f for f in [
    # every training config of the study loads the codebook's last.ckpt (first_stage_config ckpt_path);
    # epoch_259.ckpt is the one design.md §10 names. The fetch records whether the two differ.
    ReleasedFile("vas_codebook", "codebook", "models/2021-06-06T19-42-53_vas_codebook.tar.gz",
                 "0024ad3705c5e58a11779d3d9e97cc8a", member="epoch_259.ckpt", members=("epoch_259.ckpt", "last.ckpt"),
                 published=Published(6.0, 1.0, 1, "SpecVQGAN README"),
                 description="VAS spectrogram codebook (128 codes, 5 x 53 tokens), epoch_259.ckpt and last.ckpt inside"),
    _transformer("resnet50_1feat", "2021-07-29T14-59-49", "a7a1342030653945e97f68a8112ed54a", "resnet50", 1,
                 Published(25.1, 6.3, 10, _RESNET50)),
    _transformer("resnet50_5feat", "2021-07-29T14-51-25", "78b8d42be19dd1b0a346b1f512967302", "resnet50", 5,
                 Published(20.9, 6.1, 10, _RESNET50)),
    _transformer("resnet50_212feat", "2021-07-29T13-34-39", "dc2b5cbd28ad98d2f9ca4329e8aa0f64", "resnet50", 212,
                 Published(22.6, 5.8, 10, _RESNET50)),
    _transformer("no_feats", "2021-06-20T16-24-38", "ea4945802094f826061483e7b9892839", "none", 1,
                 Published(28.7, 9.2, 100, _BN_INCEPTION)),
    ReleasedFile("melception", "melception", "melception-21-05-10T09-28-40.pt", "a71a41041e945b457c7d3d814bbcf72d",
                 description="Melception trained on VGGSound (309 classes), state dict under 'model'"),
    ReleasedFile("melception_stats", "melception_stats", "train_means_stds_melspec_10s_22050hz.txt",
                 "f449c6fd0e248936c16f6d22492bb625", suffix="txt",
                 description="Melception's per-mel-bin mean and std (VGGSound train split), one 'mean std' line per bin"),
    # the MD5 the author posted for netG.pt (SpecVQGAN issue 27)
    ReleasedFile("melgan", "melgan", "melgan_ckpt/netG.pt", "e9e3ea89122d31e3dec25f585d215335",
                 description="MelGAN generator trained on VGGSound (22,050 Hz), a bare state dict"),
    # what SpecVQGAN's own sampling loads (vocoder/logs/vggsound/best_netG.pt, kept in its git repository at a fixed
    # commit); no MD5 is published for it, so the first download records one
    ReleasedFile("melgan_best", "melgan",
                 "https://raw.githubusercontent.com/v-iashin/SpecVQGAN/5bc54f30eb89f82d129aa36ae3f1e90b60e73952/"
                 "vocoder/logs/vggsound/best_netG.pt", None,
                 description="MelGAN generator trained on VGGSound (22,050 Hz), the checkpoint SpecVQGAN's sampling "
                             "loads (best_netG.pt), a bare state dict"),
]}
TRANSFORMERS = [name for name, f in RELEASED.items() if f.kind == "transformer"]
VOCODERS = [name for name, f in RELEASED.items() if f.kind == "melgan"]


def released(name: str) -> ReleasedFile:
    if name not in RELEASED:
        raise ValueError(f"unknown released file {name!r}; known: {', '.join(RELEASED)}")
    return RELEASED[name]


def how_to_fetch(name: str) -> str:
    """The command that fetches a released file into place (MD5 checked), for error messages."""
    f = released(name)
    return f"snakemake --cores 1 {f.local_path}   (downloads {f.url})"


def fetch_released(name: str, dest: str | Path, url: str | None = None, member: str | None = None) -> Path:
    """The workflow's fetch_checkpoint job: download a released file (resumable, MD5 checked, from `url` if a
    mirror is configured) and put the checkpoint it holds at `dest`: `member` (one of the archive's `members`,
    by file name), else the registry's own. An archive of several checkpoints is described beside `dest`
    (<dest>.json: each one's MD5 and size, whether they are identical, and which one `dest` is)."""
    from i2a.infra.atomic import copy_file, write_text
    from i2a.infra.download import download, extract_checkpoint, record_or_check_md5

    entry, dest = released(name), Path(dest)
    member = member or entry.member
    entry.member_path(member)  # a checkpoint the archive does not hold: the error names those it does
    url = url or entry.url
    archive = dest.parent / "downloads" / url.rsplit("/", 1)[-1]
    if not archive.exists():
        download(url, archive, md5=entry.md5)
    md5 = record_or_check_md5(archive, entry.md5)
    if entry.kind == "transformer":  # the checkpoint must be the model the registry (and so the run) describes
        found = describe_transformer_archive(archive)
        if found is not None:
            check_transformer_shape(entry, found, archive)
            write_text(dest.with_suffix(".json"), json.dumps(found, indent=2))  # description_path beside the .ckpt
    if entry.members:
        record = {"archive": archive.name, "md5": md5, "checkpoint": member, **compare_members(archive, entry.members)}
        write_text(dest.with_suffix(".json"), json.dumps(record, indent=2))
        logging.getLogger(__name__).info("%s: %s are %s", archive.name, " and ".join(entry.members),
                                         "identical" if record["identical"] else "different files")
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        extract_checkpoint(archive, dest, member)
    else:
        copy_file(archive, dest)  # streamed: the file can be larger than memory
    logging.getLogger(__name__).info("%s (md5 %s) -> %s", archive, md5, dest)
    return dest


def compare_members(archive: str | Path, names: tuple[str, ...]) -> dict[str, object]:
    """The MD5 and size of each named checkpoint in a tar archive (None for one it does not hold), and whether they
    are all the same file."""
    import hashlib

    from i2a.infra.download import open_tar

    members: dict[str, dict[str, object] | None] = dict.fromkeys(names)
    with open_tar(archive) as tar:
        for info in tar:
            base = info.name.rsplit("/", 1)[-1]
            if info.isfile() and base in members:
                digest, fh = hashlib.md5(), tar.extractfile(info)
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
                members[base] = {"md5": digest.hexdigest(), "bytes": info.size}
    sums = {m["md5"] if m else None for m in members.values()}
    return {"members": members, "identical": len(sums) == 1 and None not in sums}


VAS_TOKENS = 265  # the VAS codebook's 5 x 53 token grid: block_size = 265 + S
VAS_CODES = 128  # the VAS codebook's size: the released transformers' vocabulary


def describe_transformer_archive(archive: str | Path) -> dict[str, object] | None:
    """What a released transformer archive says it is, from the SpecVQGAN config inside it
    (`logs/<name>/configs/*-project.yaml`): features, S, layers, heads, width, vocabulary and block size. None when
    the archive holds no such config (the checkpoint's weights are still checked against the run when loaded)."""
    import yaml

    from i2a.infra.download import open_tar

    with open_tar(archive) as tar:
        for info in tar:
            if info.isfile() and info.name.endswith("-project.yaml") and "/configs/" in f"/{info.name}":
                config = yaml.safe_load(tar.extractfile(info))
                break
        else:
            return None
    try:
        gpt = config["model"]["params"]["transformer_config"]["params"]["GPT_config"]
        gpt = {k: int(gpt[k]) for k in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size")}
    except (KeyError, TypeError, ValueError) as error:  # another layout: the weights are still checked when loaded
        logging.getLogger(__name__).warning("%s: no transformer shape in its config (%s): not checked here",
                                            archive, error)
        return None
    data = (config.get("data") or {}).get("params") or {}
    S = ((data.get("feat_sampler_cfg") or {}).get("params") or {}).get("feat_sample_size")
    feats_dir = str(data.get("rgb_feats_dir_path", ""))
    features = ("none" if data.get("replace_feats_with_random") else "resnet50" if "resnet50" in feats_dir
                else "bn_inception" if "bninception" in feats_dir else None)
    return {"features": features, "feat_sample_size": S if S is not None else gpt["block_size"] - VAS_TOKENS,
            "layers": gpt["n_layer"], "heads": gpt["n_head"], "embed": gpt["n_embd"], "vocab_size": gpt["vocab_size"],
            "block_size": gpt["block_size"]}


def check_transformer_shape(entry: ReleasedFile, found: dict[str, object], where: object = "") -> None:
    """The registry's description of a released transformer must be what its checkpoint says."""
    differences = [f"{key}: the checkpoint has {found[key]}, i2a/spec/released.py says {getattr(entry, key)}"
                   for key in ("features", "feat_sample_size", "layers", "heads", "embed")
                   if found.get(key) is not None and found[key] != getattr(entry, key)]
    if differences:
        raise ValueError(f"{where or entry.name}: the released transformer {entry.name} is not the model the registry "
                         "describes: " + "; ".join(differences))
