"""What a cluster and a new user do to a run (issue 12): changed inputs, killed jobs, torn checkpoints, odd clip
folders and bad values. Each test reproduces a failure a user met, then checks that nothing is lost or wrong."""
from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, Crash, crash_after
from media_files import toy_clip, write_streams

# ---------------------------------------------------------------------------------------------- training state
N_TOK, VOCAB, CROP, DIM, S = 10, 16, 8, 6, 2


def _rows(path: Path) -> list[dict]:
    """A metrics CSV without its wall-clock columns."""
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k not in ("seconds", "time")} for row in csv.DictReader(fh)]


def _shards(tmp_path: Path, seed: int, shift: float = 0.0) -> dict[str, list[Path]]:
    """Token and feature shards on disk, as the workflow stores them."""
    from i2a.data.store import save_npy

    rng = np.random.default_rng(seed)
    files: dict[str, list[Path]] = {}
    for split, n in (("train", 16), ("valid", 8)):
        cls = rng.integers(0, 4, n)
        tokens = ((cls[:, None] * 3 + np.arange(N_TOK)[None]) % VOCAB).astype(np.int16)
        feats = (rng.normal(size=(n, CROP, DIM)) * 0.3 + shift).astype(np.float32)
        feats[np.arange(n), :, cls] += 2.0
        save_npy(tmp_path / f"{split}_tokens.npy", tokens)
        save_npy(tmp_path / f"{split}_feats.npy", feats)
        files[f"{split}_tokens"], files[f"{split}_feats"] = [tmp_path / f"{split}_tokens.npy"], [tmp_path / f"{split}_feats.npy"]
    return files


def _tiny_spec():
    from i2a.spec.runspec import GPTConfig, RunSpec, TrainSettings

    model = GPTConfig(vocab_size=VOCAB, block_size=N_TOK + S, layers=1, heads=2, embed=16, feat_dim=DIM)
    return RunSpec(name="tiny", features="resnet18", feat_sample_size=S, model=model,
                   train=TrainSettings(batch=4, base_lr=1e-3, max_epochs=2, seed=3))


def _train_run(files, codebook: Path, out: Path):
    from i2a.training.gpt import train_run

    return train_run(_tiny_spec(), {"train": files["train_tokens"], "valid": files["valid_tokens"]},
                     {"train": files["train_feats"], "valid": files["valid_feats"]}, codebook, out / "state",
                     out / "best.ckpt", out / "metrics.csv", out / "train.json")


@pytest.fixture()
def tiny_codebook(tmp_path):
    from i2a.models.codebook import VQGANConfig, VQModel

    cfg = VQGANConfig(ch=16, num_res_blocks=1, attn_resolutions=(2,), resolution=32, z_channels=32, embed_dim=32,
                      n_embed=VOCAB, norm_groups=8)
    path = tmp_path / "codebook.ckpt"
    torch.manual_seed(0)
    torch.save({"state_dict": VQModel(cfg).state_dict(), "config": cfg.to_dict()}, path)
    return path


def test_a_trained_gpt_is_not_returned_after_its_features_changed(tmp_path, tiny_codebook, caplog):
    """Issue 12.1: `train_gpt` said 'training finished, nothing to do' after the features changed (an image_size
    edit), and best.ckpt and metrics.csv came out byte-identical."""
    caplog.set_level(logging.INFO, logger="i2a.training")
    files = _shards(tmp_path / "data", seed=0)
    _train_run(files, tiny_codebook, tmp_path / "run")
    first = (tmp_path / "run" / "best.ckpt").read_bytes(), (tmp_path / "run" / "metrics.csv").read_text()

    caplog.clear()  # the same inputs again: nothing to do
    _train_run(files, tiny_codebook, tmp_path / "run")
    assert any("says training finished" in r.getMessage() for r in caplog.records)

    caplog.clear()  # new features (another backbone setting) under the same file names
    _shards(tmp_path / "data", seed=0, shift=1.5)
    _train_run(files, tiny_codebook, tmp_path / "run")
    messages = [r.getMessage() for r in caplog.records]
    assert any("changed since" in m and "train_feats.npy" in m and "from scratch" in m for m in messages), messages
    assert not any("says training finished" in m for m in messages)
    assert (tmp_path / "run" / "state.stale").is_dir()
    assert (tmp_path / "run" / "metrics.csv").read_text() != first[1]
    assert (tmp_path / "run" / "best.ckpt").read_bytes() != first[0]

    caplog.clear()  # a new codebook (same name, other content) invalidates it too
    torch.save({**torch.load(tiny_codebook, weights_only=True), "epoch": 7}, tiny_codebook)
    _train_run(files, tiny_codebook, tmp_path / "run")
    assert any("changed since" in r.getMessage() and "codebook.ckpt" in r.getMessage() for r in caplog.records)


def test_a_changed_training_code_trains_afresh_and_a_finished_state_is_handed_back_with_a_warning(
        tmp_path, tiny_codebook, caplog, monkeypatch):
    """Issue 26.5: after an edit of the training module a forced rerun said 'training finished: nothing to do' and
    republished the old model. Issue 24.5: a forced rerun (snakemake -f) of unchanged code and inputs hands back the
    finished state: it says so, and how to train again (delete the state folder)."""
    import i2a.training.gpt as trainer

    (tmp_path / "code").mkdir()
    part = tmp_path / "code" / "i2a_trainer_part.py"  # stands in for a module of the training code
    part.write_text("LOSS_SCALE = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    monkeypatch.setattr(trainer, "TRAINING_CODE", (*trainer.TRAINING_CODE, "i2a_trainer_part"))
    caplog.set_level(logging.INFO, logger="i2a.training")
    files = _shards(tmp_path / "data", seed=0)
    _train_run(files, tiny_codebook, tmp_path / "run")

    caplog.clear()  # a forced rerun of the same code and inputs: handed back, with a warning saying how to retrain
    _train_run(files, tiny_codebook, tmp_path / "run")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("says training finished" in m and f"delete {tmp_path / 'run' / 'state'}" in m for m in warned), warned

    caplog.clear()  # the training code changed: the state is set aside and the run trains from scratch
    part.write_text("LOSS_SCALE = 2.0\n")
    _train_run(files, tiny_codebook, tmp_path / "run")
    messages = [r.getMessage() for r in caplog.records]
    assert any("changed since" in m and "training code (i2a_trainer_part)" in m for m in messages), messages
    assert not any("says training finished" in m for m in messages)
    assert (tmp_path / "run" / "state.stale").is_dir()

    caplog.clear()  # deleting the state folder, as the warning says, trains again
    import shutil

    shutil.rmtree(tmp_path / "run" / "state")
    _train_run(files, tiny_codebook, tmp_path / "run")
    assert not any("says training finished" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "run" / "state" / "done.json").is_file()


def test_a_truncated_last_checkpoint_is_set_aside_and_training_restarts(tmp_path, tiny_codebook, caplog):
    """Issue 12.2: a last.ckpt cut short by a dying node made every later attempt fail with 'PytorchStreamReader
    failed reading zip archive'."""
    caplog.set_level(logging.INFO, logger="i2a.training")
    files = _shards(tmp_path / "data", seed=1)
    from i2a.training.gpt import gpt_dataset, train_gpt

    spec = _tiny_spec()
    train = gpt_dataset(spec, files["train_tokens"], files["train_feats"])
    valid = gpt_dataset(spec, files["valid_tokens"], files["valid_feats"])
    with pytest.raises(Crash):
        train_gpt(spec, train, valid, tmp_path / "state", callbacks=[crash_after(5)], accelerator="cpu")
    last = tmp_path / "state" / "last.ckpt"
    assert last.is_file()
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # the node died mid-write
    summary = train_gpt(spec, train, valid, tmp_path / "state", accelerator="cpu")
    assert summary["epochs_run"] == 2
    assert (tmp_path / "state" / "last.ckpt.corrupt").is_file()
    assert any("cannot be read" in r.getMessage() and "from scratch" in r.getMessage() for r in caplog.records)
    # checkpoints are written under a temporary name and renamed: no temporary file is left behind
    assert not [p.name for p in (tmp_path / "state").iterdir() if p.name.startswith(".")]


@pytest.mark.timeout(120)
def test_a_killed_sample_tokens_leaves_no_part_file_after_the_next_start(tmp_path):
    """Issue 26 (noted): a `sample_tokens` killed with kill -9 left its memory-mapped `.part` files (gigabytes for
    the mels) beside the outputs for ever; the next start removes them."""
    import signal

    from i2a.sampling.samples import sample_run

    out = tmp_path / "runs" / "tiny" / "samples"
    writer = (f"import sys, time, numpy as np; sys.path.insert(0, {str(REPO / 'src')!r})\n"
              "from i2a.infra.atomic import atomic_path\n"
              f"with atomic_path({str(out / 'tokens.npy')!r}) as t, atomic_path({str(out / 'mels.npy')!r}) as m:\n"
              "    np.lib.format.open_memmap(t, mode='w+', dtype=np.int16, shape=(8, 4)).flush()\n"
              "    np.lib.format.open_memmap(m, mode='w+', dtype=np.float16, shape=(8, 4)).flush()\n"
              "    print('written', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (out / "other.npy").write_bytes(b"not ours")
    left = sorted(p.name for p in out.iterdir() if ".part" in p.name)
    assert len(left) == 2  # what kill -9 leaves: no cleanup runs
    with pytest.raises(FileNotFoundError):  # the next start (here without a transformer: it stops after cleaning)
        sample_run(_tiny_spec(), tmp_path / "missing.ckpt", tmp_path / "codebook.ckpt", [], [], out / "tokens.npy",
                   out / "mels.npy", out / "names.txt", device="cpu")
    assert sorted(p.name for p in out.iterdir()) == ["other.npy"]


def _banded_mels(n: int, frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = np.arange(80)[:, None]
    out = np.empty((n, 80, frames), np.float32)
    for i in range(n):
        band = np.exp(-0.5 * ((f - (8 + 9 * (i % 8))) / 5.0) ** 2)
        out[i] = 0.2 + rng.uniform(0.5, 0.7) * band + rng.normal(0, 0.02, (80, frames))
    return np.clip(out, 0, 1)


def test_codebook_training_resumes_exactly_and_publishes_only_when_complete(tmp_path):
    """Issue 12.3: a killed train_codebook started over, and a kill -9 left the best-so-far checkpoint under the
    output's final name."""
    from i2a.models.codebook import VQGANConfig
    from i2a.training.codebook import CodebookTrainConfig, train_codebook

    cfg = VQGANConfig(ch=16, num_res_blocks=1, attn_resolutions=(2,), resolution=32, z_channels=32, embed_dim=32,
                      n_embed=32, norm_groups=8)
    tcfg = CodebookTrainConfig(batch_size=2, base_lr=5e-4, max_epochs=2, disc_start=10**9, seed=0)
    train, valid = _banded_mels(8, 32, 0), _banded_mels(2, 32, 1)
    full = train_codebook(train, valid, cfg, tcfg, tmp_path / "full")

    with pytest.raises(Crash):  # killed in the second epoch (4 steps per epoch)
        train_codebook(train, valid, cfg, tcfg, tmp_path / "resumed", callbacks=[crash_after(5)])
    assert not (tmp_path / "resumed" / "codebook.ckpt").exists()
    assert not (tmp_path / "resumed" / "metrics.csv").exists()
    assert (tmp_path / "resumed" / "state" / "best.ckpt").exists()  # the best so far waits in the state folder
    resumed = train_codebook(train, valid, cfg, tcfg, tmp_path / "resumed")
    assert _rows(tmp_path / "resumed" / "metrics.csv") == _rows(tmp_path / "full" / "metrics.csv")
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["epoch"] == b["epoch"]
    for k, v in a["state_dict"].items():
        assert torch.allclose(v, b["state_dict"][k], atol=1e-6), k


def test_melgan_training_resumes_exactly_and_publishes_only_when_complete(tmp_path):
    """Issue 12.3, the vocoder: a 72-hour job that started over after every time limit."""
    from i2a.training.vocoder import VocoderTrainConfig, train_melgan

    t = np.arange(6000) / 22050
    wavs = [(0.5 * np.sin(2 * np.pi * f * t)).astype(np.float32) for f in (220, 440, 880)]
    cfg = VocoderTrainConfig(ngf=4, n_residual_layers=1, max_channels_D=64, batch_size=3, segment_length=2048,
                             max_steps=6, lr=1e-3, save_every=2, log_every=2, amplitude_range=None)
    full = train_melgan(wavs, cfg, tmp_path / "full")
    with pytest.raises(Crash):
        train_melgan(wavs, cfg, tmp_path / "resumed", callbacks=[crash_after(3)])
    assert not (tmp_path / "resumed" / "melgan.ckpt").exists()
    resumed = train_melgan(wavs, cfg, tmp_path / "resumed")
    full_rows, resumed_rows = _rows(tmp_path / "full" / "metrics.csv"), _rows(tmp_path / "resumed" / "metrics.csv")
    assert [r["step"] for r in resumed_rows] == [r["step"] for r in full_rows]
    for x, y in zip(full_rows, resumed_rows):
        assert float(x["mel_l1"]) == pytest.approx(float(y["mel_l1"]), rel=1e-4, abs=1e-6)
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert a["step"] == b["step"]
    key = next(iter(a["generator"] if "generator" in a else a["state_dict"]))
    sd_a = a["generator"] if "generator" in a else a["state_dict"]
    sd_b = b["generator"] if "generator" in b else b["state_dict"]
    assert torch.allclose(sd_a[key], sd_b[key], atol=1e-5)


# ---------------------------------------------------------------------------------------------- clip folders
def _tree(root: Path) -> Path:
    frames, audio = toy_clip(0.3, seed=1)
    (root / "dog").mkdir(parents=True)
    write_streams(root / "dog" / "good.mp4", frames, audio)
    (root / "dog" / "x.mp4").mkdir()  # a folder named like a video, with a file inside
    write_streams(root / "dog" / "x.mp4" / "inner.mp4", frames, audio)
    (root / "dog" / "loop.mp4").symlink_to("loop.mp4")  # a symlink loop
    (root / "dog" / "up").symlink_to("..")  # a folder loop
    (root / "dog" / "notes.txt").write_text("not a clip")
    (root / "dog" / "bad\nname.mp4").write_bytes(b"x")
    (root / "dog" / ".DS_Store").write_bytes(b"x")
    (root / "stray.mp4").write_bytes(b"x")
    (root / "cat").mkdir()
    os.symlink(root / "dog" / "good.mp4", root / "cat" / "linked.mp4")  # a link to a real clip is a clip
    return root


def test_clips_are_listed_and_everything_else_is_reported_with_its_reason(tmp_path):
    """Issue 12.6: a folder named x.mp4 and symlink loops were skipped silently, a file inside x.mp4 became clip
    dog/inner, and a newline in a name broke videos.txt."""
    from i2a.data.clips import find_clips, list_clips, read_clip_table

    root = _tree(tmp_path / "raw")
    clips, rejected = find_clips(root)
    assert [name for name, _ in clips] == ["cat/linked", "dog/good"]
    reasons = dict(rejected)
    assert "folder named like a video" in reasons["dog/x.mp4"]
    assert "broken, or a loop" in reasons["dog/loop.mp4"] or "cannot be read" in reasons["dog/loop.mp4"]
    assert "a folder inside a class folder" in reasons["dog/up"]
    assert "not a video file" in reasons["dog/notes.txt"]
    assert "control character" in reasons["dog/bad\nname.mp4"]
    assert "not inside a class folder" in reasons["stray.mp4"]
    assert not any("inner" in name for name, _ in clips) and ".DS_Store" not in str(rejected)

    list_clips(root, 0, {"train": 1, "valid": 1}, tmp_path / "clips.tsv", tmp_path / "rejected.tsv")
    table = read_clip_table(tmp_path / "rejected.tsv")
    assert dict(zip(table["path"], table["reason"])) == reasons  # a name with a newline round-trips too


def test_adding_a_clip_to_a_local_folder_relists_the_clips(tmp_path):
    """Issue 12.5: copying a clip into an existing class folder gave 'Nothing to be done'."""
    from i2a.infra.checksum import listing_digest

    root = _tree(tmp_path / "raw")
    before = listing_digest(root)
    assert listing_digest(root) == before  # stable, and the symlink loop does not trap it
    frames, audio = toy_clip(0.3, seed=2)
    write_streams(root / "dog" / "new.mp4", frames, audio)
    added = listing_digest(root)
    assert added != before
    os.utime(root / "dog" / "new.mp4", ns=(1, 1))  # replaced by another file of the same name
    assert listing_digest(root) != added
    (root / "dog" / "new.mp4").unlink()
    assert listing_digest(root) == before


def test_a_video_with_a_header_but_no_frames_says_so(tmp_path):
    """Issue 12.6: such a clip was skipped as 'Error marking filters as finished'."""
    import av

    from i2a.data.media import BadClip, preprocess_clip

    _, audio = toy_clip(0.5, seed=0)
    path = tmp_path / "empty.mkv"
    with av.open(str(path), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 80, 64, "yuv420p"
        sound = out.add_stream("aac", rate=44100, layout="mono")
        frame = av.AudioFrame.from_ndarray(audio[None], format="fltp", layout="mono")
        frame.sample_rate = 44100
        for packet in [*sound.encode(frame), *sound.encode(), *video.encode()]:
            out.mux(packet)
    with pytest.raises(BadClip, match="no video frames"):
        preprocess_clip(path, tmp_path / "v.mp4", tmp_path / "a.wav", seconds=1.0)


def test_an_extreme_aspect_ratio_is_cut_before_resizing(tmp_path):
    """Issue 12.6: a 4 x 2048 clip made extract_features allocate 21 GB (a shorter side of 256 -> 131,072 wide)."""
    from i2a.spec.backbones import VIDEO_FEATURES_CNN

    frames = np.random.default_rng(0).integers(0, 255, (3, 4, 2048, 3), dtype=np.uint8)
    crops = VIDEO_FEATURES_CNN.resize_crop(frames)
    assert crops.shape == (3, 3, 224, 224) and crops.dtype == torch.uint8
    # within MAX_ASPECT nothing changes: a 16:9 frame goes through exactly as before
    from torchvision.transforms.v2 import functional as TF

    wide = np.random.default_rng(1).integers(0, 255, (2, 90, 160, 3), dtype=np.uint8)
    x = torch.from_numpy(wide).permute(0, 3, 1, 2)
    direct = TF.center_crop(TF.resize(x, [256], antialias=True), [224, 224])
    assert torch.equal(VIDEO_FEATURES_CNN.resize_crop(wide), direct)


def test_a_large_video_is_scaled_while_decoding(tmp_path):
    from i2a.data.media import read_video_frames

    frames, audio = toy_clip(0.3, seed=0)
    big = np.repeat(np.repeat(frames, 8, axis=1), 8, axis=2)  # 512 x 640
    write_streams(tmp_path / "big.mp4", big, audio)
    full = read_video_frames(tmp_path / "big.mp4", fps=21.5)
    small = read_video_frames(tmp_path / "big.mp4", fps=21.5, max_short_side=128)
    assert full.shape[1:3] == (512, 640) and small.shape[1:3] == (128, 160) and len(small) == len(full)


def test_the_ffmpeg_chain_runs_on_the_jobs_threads_and_scales_an_oversized_source_down(tmp_path, monkeypatch):
    """Issue 26.6: preprocess_clips ran x264 at the source's resolution on automatic threads (an 8K clip: 6.1 GB on
    2 cores, 10.7 GB with 24 threads, against the rule's 4 GB). Here a 512 x 640 clip stands in for an 8K one
    (the bound lowered to 320 x 256 pixels)."""
    import i2a.data.media as media
    from i2a.data.media import preprocess_clip, read_video_frames

    frames, audio = toy_clip(0.5, seed=0)
    write_streams(tmp_path / "big.mp4", np.repeat(np.repeat(frames, 8, axis=1), 8, axis=2), audio)
    commands = []
    run = media._ffmpeg
    monkeypatch.setattr(media, "_ffmpeg", lambda exe, args, step: commands.append(args) or run(exe, args, step))
    monkeypatch.setattr(media, "MAX_CHAIN_PIXELS", 320 * 256)
    preprocess_clip(tmp_path / "big.mp4", tmp_path / "out.mp4", tmp_path / "out.wav", seconds=1.0)
    encodes = [args for args in commands if "libx264" in args]
    assert len(encodes) == 2
    for args in encodes:  # decoder and encoder threads both set (before and after the input)
        inputs = args.index("-i")
        assert args[args.index("-threads"):][:2] == ["-threads", "1"] and args.index("-threads") < inputs
        assert ["-threads", "1"] == args[inputs:][args[inputs:].index("-threads"):][:2]
    assert read_video_frames(tmp_path / "out.mp4").shape[1:3] == (256, 320)  # 512 x 640 to at most 320 x 256 pixels
    commands.clear()
    preprocess_clip(tmp_path / "big.mp4", tmp_path / "out2.mp4", tmp_path / "out2.wav", seconds=1.0, threads=3)
    assert all(args.count("3") >= 2 for args in commands if "libx264" in args)


def test_one_unreadable_clip_never_fails_its_shard(tmp_path):
    """Issue 12.6: one clip failed the whole extract_features shard; now it gets a NaN row and its reason, the
    others their features, and training leaves it out."""
    from i2a.data.store import ShardedArray, finite_rows
    from i2a.features.backbones import build_backbone
    from i2a.features.extract import extract_features
    from i2a.training.gpt import GPTDataset

    frames, audio = toy_clip(0.5, seed=0)
    good = tmp_path / "good.mp4"
    write_streams(good, frames, audio)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    encoder = build_backbone("resnet18", weights="none", image_size=32)
    failures: dict[int, str] = {}
    feats = extract_features(encoder, [good, broken, good], tmp_path / "f.npy", total=12, crop=10, num_workers=1,
                             failures=failures)
    assert list(failures) == [1] and failures[1]  # the reason, as the decoder gave it
    assert np.isfinite(feats[0]).all() and np.isnan(feats[1]).all() and np.array_equal(feats[0], feats[2])
    rows = ShardedArray([tmp_path / "f.npy"])
    keep = np.flatnonzero(finite_rows(rows))
    assert keep.tolist() == [0, 2]
    ds = GPTDataset(np.zeros((3, 4), np.int16), rows, S=2, keep=keep)
    assert len(ds) == 2 and all(torch.isfinite(ds[i][1].float()).all() for i in range(2))


# ---------------------------------------------------------------------------------------------- config values
def _demo_config() -> dict:
    """config/config.yaml with config/demo.yaml merged over it, as `--configfile` does."""
    from i2a.spec.config import merge_config

    return merge_config(yaml.safe_load((REPO / "config/config.yaml").read_text()),
                        yaml.safe_load((REPO / "config/demo.yaml").read_text()))


@pytest.mark.parametrize("edit, key", [
    (lambda c, p: c["sampling"].update(top_k=64), "sampling.top_k"),
    (lambda c, p: c["audio"].update(hop_length=0), "audio.hop_length"),
    (lambda c, p: c["audio"].update(sample_rate=-5), "audio.sample_rate"),
    (lambda c, p: c["shards"].update(valid=25), "shards.valid"),
    (lambda c, p: c["backbones"]["resnet18"].update(weights=str(p / "missing.pth")), "backbones.resnet18.weights"),
    (lambda c, p: c["backbones"]["resnet18"].update(weights=str(p / "notes.pth")), "backbones.resnet18.weights"),
    (lambda c, p: c["vas"].update(md5="d3bd4674"), "vas.md5"),
], ids=["top-k-above-codebook", "hop-0", "negative-rate", "more-shards-than-clips", "missing-weights",
        "weights-not-a-checkpoint", "md5-not-32-hex-digits"])
def test_bad_values_stop_before_any_job_naming_the_key(tmp_path, edit, key):
    """Issue 12.7: these reached a job (a KeyError: 101 deep inside, silently no top-k) or were accepted."""
    from i2a.spec.config import ConfigError, validate_config

    (tmp_path / "notes.pth").write_text("these are my notes, not weights")
    config = _demo_config()
    edit(config, tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        validate_config(config, REPO / "workflow/schemas/config.schema.yaml")
    if "weights" in key:
        assert str(tmp_path) in str(error.value)


def _set_run(key, value):
    return lambda c: c["runs"][0].update({key: value})


@pytest.mark.parametrize("edit, key", [
    (lambda c: c.update(results=""), "results"), (lambda c: c.update(results="/"), "results"),
    (lambda c: c.update(logs=""), "logs"), (lambda c: c.update(logs="//"), "logs"),
    (lambda c: c["sampling"].update(temperature=float("nan")), "sampling.temperature"),
    (lambda c: c["sampling"].update(temperature=1e-300), "sampling.temperature"),
    (_set_run("base_lr", float("nan")), "runs[0].base_lr"),
    (_set_run("weight_decay", float("nan")), "runs[0].weight_decay"),
    (_set_run("dropout", float("nan")), "runs[0].dropout"),
    (lambda c: c["audio"].update(fmax=float("nan")), "audio.fmax"),
    (lambda c: c["audio"].update(seconds=float("inf")), "audio.seconds"),
    (_set_run("seed", -1), "runs[0].seed"), (_set_run("seed", 2 ** 32), "runs[0].seed"),
    (lambda c: c["sampling"].update(seed=-1), "sampling.seed"),
    (lambda c: c["metrics"].update(bootstrap=0), "metrics.bootstrap"),
    (lambda c: c["sampling"].update(samples_per_video=10 ** 9), "sampling.samples_per_video"),
    (_set_run("samples_per_video", 10 ** 9), "runs[0].samples_per_video"),
    (_set_run("name", "reconstruction"), "runs[0].name"),
], ids=["results-empty", "results-root", "logs-empty", "logs-root", "temperature-nan", "temperature-underflow",
        "base-lr-nan", "weight-decay-nan", "dropout-nan", "fmax-nan", "seconds-inf", "seed-negative", "seed-2**32",
        "sampling-seed-negative", "bootstrap-0", "samples-per-video-1e9", "run-samples-per-video-1e9",
        "run-named-like-the-ceiling-row"])
def test_values_that_passed_the_checks_and_failed_late_are_refused_at_planning(edit, key):
    """Issue 26.4, 11-13: each was accepted, then planned /table.csv at the root, sampled one constant code (NaN,
    1e-300), failed in a job (seeds, bootstrap 0, 6 GB of seeds) or lost its row to the ceiling's."""
    import re

    from i2a.spec.config import ConfigError, validate_config

    config = _demo_config()
    edit(config)
    with pytest.raises(ConfigError, match=re.escape(f"config key {key}")):
        validate_config(config, REPO / "workflow/schemas/config.schema.yaml")


def test_the_largest_seed_and_smallest_temperature_are_accepted():
    from i2a.spec.config import MIN_TEMPERATURE, validate_config

    config = _demo_config()
    config["runs"][0]["seed"], config["sampling"]["seed"] = 2 ** 32 - 1, 0
    config["sampling"]["temperature"], config["metrics"]["bootstrap"] = MIN_TEMPERATURE, 1
    validate_config(config, REPO / "workflow/schemas/config.schema.yaml")


def test_a_learning_rate_written_2e_4_is_read_as_the_number(tmp_path):
    from i2a.spec.config import validate_config

    config = _demo_config()
    config["runs"][0]["base_lr"] = yaml.safe_load("x: 2e-4")["x"]
    assert isinstance(config["runs"][0]["base_lr"], str)  # what YAML 1.1 makes of it
    validate_config(config, REPO / "workflow/schemas/config.schema.yaml")
    assert config["runs"][0]["base_lr"] == pytest.approx(2e-4)


def test_local_clips_fewer_than_shards_say_which_key(tmp_path):
    from i2a.data.clips import make_clip_table

    root = _tree(tmp_path / "raw")
    with pytest.raises(ValueError, match=r"shards\.train: 5; set shards\.train to at most 2"):
        make_clip_table(root, 0, {"train": 5, "valid": 1})


# ---------------------------------------------------------------------------------------------- set-up
DEBIAN_PYTHON = Path("/usr/bin/python3")


@pytest.mark.skipif(not DEBIAN_PYTHON.exists(), reason="no system Python at /usr/bin/python3")
def test_uv_installs_with_the_system_python_where_pip_install_user_is_refused(tmp_path):
    """Issue 12.9: `pip install --user uv`, step one of `make demo`, fails on an externally managed Python."""
    marker = list(Path("/usr/lib").glob("python3*/EXTERNALLY-MANAGED"))
    if marker:  # reproduce what the Makefile used to do
        pip = subprocess.run([str(DEBIAN_PYTHON), "-m", "pip", "install", "--user", "--dry-run", "uv"],
                             capture_output=True, text=True)
        assert pip.returncode != 0
    dest = tmp_path / "bin" / "uv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = subprocess.run([str(DEBIAN_PYTHON), str(REPO / "tools/get_uv.py"), "0.13.9", str(dest)],
                            capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0 and "urlopen error" in result.stderr:
        pytest.skip(f"the package index cannot be reached: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    version = subprocess.run([str(dest), "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("uv 0.13.9")
    assert "tools/get_uv.py" in (REPO / "Makefile").read_text()


# ---------------------------------------------------------------------------------------------- locks
@pytest.mark.parametrize("argv, mode", [
    (["--cores", "2"], "run"), (["--profile", "profiles/slurm", "results/table.csv"], "run"),
    (["-n"], "read-only"), (["-np", "--cores", "1"], "read-only"), (["--dry-run"], "read-only"),
    (["--lint"], "read-only"), (["--report", "report.html"], "read-only"), (["--unlock"], "unlock"),
    (["--nolock", "--cores", "1"], "nolock"), (["--summary"], "read-only"), (["-c1"], "run"),
    (["--cleanup-shadow"], "run"), (["--containerize"], "run"),
])
def test_what_an_invocation_does_to_locks(argv, mode):
    from i2a.pipeline.lock import invocation_mode

    assert invocation_mode(argv) == mode


@pytest.fixture()
def other_run(tmp_path):
    """A live process recorded as the instance running in the folder."""
    import json
    import socket

    from i2a.pipeline.lock import _start_time

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    record = tmp_path / ".snakemake" / "i2a-run.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"pid": proc.pid, "host": socket.gethostname(), "started": _start_time(proc.pid),
                                  "time": 0, "command": "snakemake --profile profiles/slurm results/table.csv"}))
    yield proc, record
    proc.kill()
    proc.wait()


def test_a_second_instance_is_refused_while_one_runs(other_run):
    """Issue 12.8: a second invocation deleted the running instance's locks when it ended, and a third then ran the
    same job a second time."""
    from i2a.pipeline.lock import AnotherRunError, guard, release

    proc, record = other_run
    for argv in (["--cores", "1"], ["--unlock"]):
        with pytest.raises(AnotherRunError, match=rf"pid {proc.pid}.*delete its locks.*a dry run \(-n\) is always"):
            guard(argv, record)
    assert guard(["-n"], record) == "read-only"
    proc.kill()
    proc.wait()
    assert guard(["--cores", "1"], record) == "run"  # the killed instance's record is replaced by this one's
    assert str(os.getpid()) in record.read_text()
    release(record)
    assert not record.exists()


@pytest.mark.parametrize("argv", [["--nolock", "--forcerun", "train_gpt", "--cores", "1"], ["--cleanup-shadow"],
                                  ["--containerize"]], ids=["nolock", "cleanup-shadow", "containerize"])
def test_nolock_cleanup_shadow_and_containerize_are_refused_while_one_runs(other_run, argv):
    """Issue 26.7-8: --nolock trained the same runs in the same state folder beside the running instance;
    --cleanup-shadow and --containerize take and then delete the locks (the whole folder), the running one's too."""
    from i2a.pipeline.lock import AnotherRunError, guard

    proc, record = other_run
    with pytest.raises(AnotherRunError, match=rf"pid {proc.pid}"):
        guard(argv, record)
    assert str(proc.pid) in record.read_text()


def _race_once(record: str, barrier, results) -> None:
    from i2a.pipeline.lock import AnotherRunError, guard

    barrier.wait()
    try:
        results.put(guard(["--cores", "1"], Path(record)))
    except AnotherRunError:
        results.put("refused")
    except Exception as error:  # noqa: BLE001 - the test reports it
        results.put(f"error: {error!r}")
    barrier.wait()  # stay alive (the record's process) until every contender has tried


@pytest.mark.timeout(300)
def test_of_instances_started_at_once_exactly_one_gets_in(tmp_path):
    """Issue 26.9: with 2-3 processes calling the guard at once more than one got in, in 56-91% of trials (a
    just-created empty record was read as torn and deleted)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for trial in range(12):
        contenders = 2 + trial % 2
        record = tmp_path / str(trial) / ".snakemake" / "i2a-run.json"
        barrier, results = ctx.Barrier(contenders), ctx.Queue()
        procs = [ctx.Process(target=_race_once, args=(str(record), barrier, results)) for _ in range(contenders)]
        for proc in procs:
            proc.start()
        outcomes = sorted(results.get(timeout=60) for _ in procs)
        for proc in procs:
            proc.join(60)
        assert outcomes == ["refused"] * (contenders - 1) + ["run"], f"trial {trial}: {outcomes}"


@pytest.mark.parametrize("text", ["[1]", '{"pid": "abc"}', '{"pid": 1e400}', '{"pid": 123456789012345678901234}',
                                  "null", "", '{"pid": 4'], ids=["list", "pid-text", "pid-inf", "pid-huge", "null",
                                                                "empty", "torn"])
def test_an_unreadable_record_is_stale_once_its_writer_is_gone(tmp_path, text, caplog):
    """Issue 26.10: these crashed every invocation (TypeError, ValueError, OverflowError) or, `null`, refused for
    ever. A record is only ever written whole, so an unreadable one that no longer changes has no writer."""
    from i2a.pipeline.lock import SETTLE_S, guard, release

    record = tmp_path / ".snakemake" / "i2a-run.json"
    record.parent.mkdir(parents=True)
    record.write_text(text)
    old = record.stat().st_mtime - SETTLE_S - 1
    os.utime(record, (old, old))
    with caplog.at_level(logging.WARNING, logger="i2a.pipeline.lock"):
        assert guard(["--cores", "1"], record) == "run"
    assert str(os.getpid()) in record.read_text()
    assert f"{record} could not be read as a run record" in caplog.text and "replaced" in caplog.text
    release(record)
    assert not record.exists()


def test_the_workflow_refuses_unlock_while_a_run_is_alive_and_still_plans(other_run, tmp_path):
    from workflow_helpers import copy_workflow, snakemake

    proc, record = other_run
    wf = copy_workflow(tmp_path)
    locks = wf / ".snakemake" / "locks"
    locks.mkdir()
    (locks / "0.output.lock").write_text("the running instance's lock")
    refused = snakemake("--configfile", "config/demo.yaml", "--unlock", "--cores", "1", cwd=wf, timeout=300)
    assert refused.returncode != 0 and "another Snakemake is running in this folder" in refused.stderr
    assert (locks / "0.output.lock").exists()
    planned = snakemake("--configfile", "config/demo.yaml", "-n", "--cores", "1", "--quiet", "rules", cwd=wf,
                        timeout=300)
    assert planned.returncode == 0, planned.stderr[-2000:]


def test_a_released_codebook_fixes_the_vocabulary(tmp_path):
    """The runs' vocab_size comes from codebook.model.n_embed: with the released codebook it must be its 128."""
    from i2a.spec.config import ConfigError, validate_config

    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["codebook"].setdefault("model", {})["n_embed"] = 64
    with pytest.raises(ConfigError, match=r"codebook\.model\.n_embed: 64.*128 codes"):
        validate_config(config, REPO / "workflow/schemas/config.schema.yaml")


def test_the_workflow_relists_a_local_folder_whose_clips_changed(tmp_path):
    """Issue 12.5 through Snakemake itself: list_clips' `listing` param carries the folder's digest, so a clip added
    after a listing reruns list_clips."""
    from workflow_helpers import copy_workflow, snakemake, write_config

    raw = tmp_path / "raw"
    frames, audio = toy_clip(0.3, seed=1)
    for name in ("dog/a", "dog/b", "cat/a", "cat/b"):
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        write_streams(raw / f"{name}.mp4", frames, audio)
    wf = copy_workflow(tmp_path / "wf")

    def local(config):
        config.update(dataset="vas", shards={"train": 1, "valid": 1})
        config["vas"] = {"source": "local", "local_dir": str(raw), "valid_per_class": {"dog": 1, "cat": 1}}

    configfile = write_config(wf / "config/local.yaml", REPO / "config/demo.yaml", local)
    target = yaml.safe_load(configfile.read_text())["results"] + "/data/clips.tsv"
    first = snakemake("--cores", "1", target, "--configfile", str(configfile), cwd=wf)
    assert first.returncode == 0, first.stderr[-3000:]
    again = snakemake("-n", target, "--configfile", str(configfile), cwd=wf)
    assert "Nothing to be done" in again.stdout + again.stderr
    write_streams(raw / "dog" / "c.mp4", frames, audio)
    changed = snakemake("-n", target, "--configfile", str(configfile), cwd=wf)
    assert "Params have changed" in changed.stdout and "rule list_clips" in changed.stdout, changed.stdout[-3000:]
