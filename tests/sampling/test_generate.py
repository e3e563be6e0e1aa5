"""`i2a generate` on tiny random models: inputs, bad files, images as still videos, self-describing checkpoints.

The demo's trained models (is the sound the picture's class?) are tested in test_workflow.py, on the demo run once.
"""
from __future__ import annotations

import io
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from PIL import Image

from conftest import REPO
from media_files import toy_clip, write_streams

from i2a.data.mel import MelSpec
from i2a.features.backbones import build_backbone
from i2a.features.extract import extract_clip_features
from i2a.models.codebook import VQGANConfig, VQModel, check_codebook, codebook_fingerprint
from i2a.models.gpt import GPT
from i2a.models.transformer import CKPT_FORMAT, LoadedTransformer, load_released_transformer, released_config
from i2a.models.vocoder import load_vocoder
from i2a.sampling import cli, errors, inputs, loading, loop
from i2a.spec import released as released_registry
from i2a.spec.config import load_config, merge_config
from i2a.spec.frames import condition_rows, pad_and_crop_indices, sample_frame_indices
from i2a.spec.runspec import GPTConfig, RunSpec, SamplingSettings

S, N_MELS, CROP_FRAMES = 3, 80, 160
TINY_CODEBOOK = VQGANConfig(ch=8, ch_mult=(1, 1, 1, 1, 1), num_res_blocks=1, attn_resolutions=(),
                            resolution=CROP_FRAMES, z_channels=8, embed_dim=8, n_embed=16, norm_groups=4)
N_TOKENS = (N_MELS // 16) * (CROP_FRAMES // 16)  # 5 x 10


def tiny_transformer(features: str = "resnet18", feat_dim: int = 512, name: str = "tiny") -> LoadedTransformer:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=TINY_CODEBOOK.n_embed, block_size=N_TOKENS + S, layers=1, heads=2, embed=16,
                    feat_dim=feat_dim)
    return LoadedTransformer(GPT(cfg).eval(), RunSpec(name=name, features=features, feat_sample_size=S, model=cfg,
                                                      sampling=SamplingSettings(top_k=TINY_CODEBOOK.n_embed)))


def tiny_codebook() -> VQModel:
    torch.manual_seed(1)
    return VQModel(TINY_CODEBOOK).eval()


@pytest.fixture(scope="module")
def encoder():
    return build_backbone("resnet18", weights="none", image_size=64)


def tiny_model(encoder, features: bool = True) -> loading.SoundModel:
    mel = MelSpec(keep_frames=172, crop_frames=CROP_FRAMES)
    transformer = tiny_transformer() if features else tiny_transformer("none", 2048)
    sampling = {**vars(SamplingSettings(top_k=TINY_CODEBOOK.n_embed)), "batch_size": 64}
    return loading.SoundModel(name="tiny", transformer=transformer, codebook=tiny_codebook(),
                              encoder=encoder if features else None, vocoder=load_vocoder("griffin_lim", mel), mel=mel,
                              seconds=2.0, fps=21.5, feat_frames=43, feat_crop=40, device=torch.device("cpu"),
                              precision="fp32", sampling=sampling)


def save_image(path: Path, size=(96, 72), mode="RGB", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8), mode).save(path)
    return path


def save_video(path: Path, seconds=1.0, audio=True, seed=0) -> Path:
    frames, sound = toy_clip(seconds, seed=seed)
    write_streams(path, frames, sound if audio else None)
    return path


# ---------------------------------------------------------------- inputs

def test_a_folder_expands_to_its_images_and_videos_in_name_order(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ["b.png", "a.JPG", "c.webp", "d.mp4", "e.mkv", "notes.txt", ".hidden.png", "sub/f.png"]:
        (folder / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    single = tmp_path / "single.jpeg"
    single.write_bytes(b"x")
    files, problems = inputs.expand_inputs([single, folder, folder / "b.png", tmp_path / "missing.jpg",
                                         tmp_path / "empty"])
    assert [p.name for p in files] == ["single.jpeg", "a.JPG", "b.png", "c.webp", "d.mp4", "e.mkv"]
    assert [(p.name, "no such" in why or "no images" in why) for p, why in problems] == [("missing.jpg", True),
                                                                                       ("empty", True)]


def test_output_stems_stay_distinct():
    assert loop.output_stems([Path("a/x.jpg"), Path("b/x.png"), Path("y.mp4"), Path("c/x.webp")]) == \
        ["x", "x-2", "y", "x-3"]


def test_config_merges_like_snakemake():
    base = {"audio": {"seconds": 10, "sample_rate": 22050}, "runs": [{"name": "a"}, {"name": "b"}]}
    merged = merge_config(base, {"audio": {"seconds": 2}, "runs": [{"name": "c"}]})
    assert merged == {"audio": {"seconds": 2, "sample_rate": 22050}, "runs": [{"name": "c"}]}
    config = load_config(REPO / "config/demo.yaml")
    assert config["audio"]["seconds"] == 2 and config["audio"]["sample_rate"] == 22050  # the demo over config.yaml
    assert [r["name"] for r in config["runs"]] == ["resnet18-s5", "clip-s5", "no-feats"]


def test_images_are_read_upright_as_rgb(tmp_path):
    frame = inputs.read_image(save_image(tmp_path / "rgba.png", (50, 30), "RGBA"))
    assert frame.shape == (1, 30, 50, 3) and frame.dtype == np.uint8
    webp = save_image(tmp_path / "x.webp", (40, 20))
    assert inputs.read_image(webp).shape == (1, 20, 40, 3)
    # a phone photo stored sideways with an EXIF rotation is turned upright
    image = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert inputs.read_image(tmp_path / "rotated.jpg").shape == (1, 40, 20, 3)


@pytest.mark.parametrize("content, expected", [
    (b"", "not a readable image"),
    (b"this is not a picture", "JPEG, PNG or WebP"),
], ids=["empty", "text"])
def test_a_bad_image_says_what_to_give(tmp_path, content, expected):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(errors.InputError, match=expected):
        inputs.read_image(path)


def test_a_truncated_jpeg_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:300])
    with pytest.raises(errors.InputError, match="not a readable image"):
        inputs.read_image(path)


def test_an_image_smaller_than_the_backbone_input_is_refused(tmp_path):
    with pytest.raises(errors.InputError, match=r"40 x 30 pixels is smaller than the backbone's 64 x 64 input"):
        inputs.read_image(save_image(tmp_path / "small.png", (40, 30)), min_size=64)
    assert inputs.read_image(save_image(tmp_path / "wide.png", (64, 30)), min_size=64).shape == (1, 30, 64, 3)


# ---------------------------------------------------------------- conditioning

def test_an_image_is_a_still_video(tmp_path, encoder):
    model = tiny_model(encoder)
    image = save_image(tmp_path / "still.png", (96, 72))
    prepared = inputs.prepare(image, model, tmp_path / "work")
    assert prepared.kind == "image" and prepared.clip is None and prepared.feats.shape == (512, S)
    # the same frame at every condition position, encoded as the workflow encodes a clip's frames
    expected = extract_clip_features(encoder, inputs.read_image(image))[0]
    for column in prepared.feats.T:
        np.testing.assert_array_equal(column, expected)


def test_a_video_goes_through_the_chain_at_the_configs_rate(tmp_path, encoder):
    model = tiny_model(encoder)
    prepared = inputs.prepare(save_video(tmp_path / "clip.mp4", seconds=3.0), model, tmp_path / "work")
    assert prepared.kind == "video" and prepared.feats.shape == (512, S)
    # the chain's clip: cut to the config's 2 s, frames read at 21.5 fps
    from i2a.data.media import probe_clip, read_video_frames

    assert abs(probe_clip(prepared.clip)["container_duration"] - 2.0) < 0.1
    assert len(read_video_frames(prepared.clip, fps=21.5)) == 43
    # a silent video is a video too: it gets silence to be measured and looped by
    silent = inputs.prepare(save_video(tmp_path / "silent.mp4", seconds=1.0, audio=False), model, tmp_path / "work2")
    assert silent.feats.shape == (512, S)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_videos_features_are_the_workflows(tmp_path, encoder, precision):
    """The condition positions of a video hold exactly what the workflow's extract_features stores for its chain
    clip, at the config's precision, also for frames large enough that the workflow's decoder scales them down."""
    from dataclasses import replace

    from i2a.features.extract import extract_features

    frames, sound = toy_clip(3.0, seed=3)
    big = np.repeat(np.repeat(frames, 5, axis=1), 5, axis=2)  # 320 x 400: shorter side over 4 x the resize (73)
    path = tmp_path / "big.mp4"
    write_streams(path, big, sound)
    model = replace(tiny_model(encoder), precision=precision)
    prepared = inputs.prepare(path, model, tmp_path / "work")
    stored = extract_features(encoder, [prepared.clip], tmp_path / "feats.npy", total=model.feat_frames,
                              crop=model.feat_crop, fps=model.fps, num_workers=0, precision=precision)
    np.testing.assert_array_equal(prepared.feats, stored[0][sample_frame_indices(model.feat_crop, S)].T)


@pytest.mark.parametrize("make, expected", [
    (lambda p: write_streams(p, None, toy_clip(1.0)[1]), "no video track"),
    (lambda p: p.write_bytes(b"\x00" * 1000), "cannot open"),
    (lambda p: p.write_bytes(b""), "empty file"),
], ids=["audio-only", "garbage", "empty"])
def test_a_bad_video_says_why(tmp_path, encoder, make, expected):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(errors.InputError, match=expected):
        inputs.prepare(path, tiny_model(encoder), tmp_path / "work")


# ---------------------------------------------------------------- generating

def test_generate_writes_every_good_input_and_reports_the_bad_ones(tmp_path, encoder):
    folder = tmp_path / "in"
    folder.mkdir()
    save_image(folder / "a.png", (96, 72), seed=1)
    save_image(folder / "b.jpg", (96, 72), seed=2)
    save_video(folder / "c.mp4", seconds=1.0)
    (folder / "corrupt.png").write_bytes(b"not a png")
    save_image(folder / "tiny.webp", (16, 16))
    (folder / "readme.txt").write_text("ignored: not an image or a video")
    model = tiny_model(encoder)
    out = tmp_path / "out"
    results = loop.generate(model, [folder], out, samples=2, seed=3, top_k=8, batch_size=3, mux=True,
                           keep_mels=True, progress=False)
    by_name = {r.path.name: r for r in results}
    assert set(by_name) == {"a.png", "b.jpg", "c.mp4", "corrupt.png", "tiny.webp"}
    assert "not a readable image" in by_name["corrupt.png"].error
    assert "smaller than the backbone" in by_name["tiny.webp"].error
    for name in ["a.png", "b.jpg", "c.mp4"]:
        result = by_name[name]
        assert result.error is None
        assert [p.name for p in result.wavs] == [f"{Path(name).stem}_sample00.wav", f"{Path(name).stem}_sample01.wav"]
        info = soundfile.info(str(result.wavs[0]))
        assert info.samplerate == 22050 and info.channels == 1 and info.frames == CROP_FRAMES * 256
        assert Image.open(result.spectrogram).size[0] >= 600  # the labelled figure, not 160 raw pixels
        assert result.mels.shape == (2, N_MELS, CROP_FRAMES)
    assert [p.name for p in by_name["c.mp4"].videos] == ["c_sample00.mp4", "c_sample01.mp4"]
    assert by_name["a.png"].videos == []  # images are not muxed
    from i2a.data.media import probe_clip

    assert probe_clip(by_name["c.mp4"].videos[0])["orig_sample_rate"] == 22050
    # different pictures, different sounds; the two samples of one picture differ too
    assert not np.array_equal(by_name["a.png"].mels, by_name["b.jpg"].mels)
    assert not np.array_equal(by_name["a.png"].mels[0], by_name["a.png"].mels[1])


def test_an_inputs_samples_depend_only_on_it_and_the_seed(tmp_path, encoder):
    model = tiny_model(encoder)
    a, b = save_image(tmp_path / "a.png", seed=1), save_image(tmp_path / "b.png", seed=2)
    alone = loop.generate(model, [a], tmp_path / "alone", samples=2, seed=5, keep_mels=True, progress=False)
    together = loop.generate(model, [b, a], tmp_path / "together", samples=2, seed=5, batch_size=4, keep_mels=True,
                            progress=False)
    np.testing.assert_allclose(alone[0].mels, together[1].mels, atol=1e-5)
    other_seed = loop.generate(model, [a], tmp_path / "other", samples=2, seed=6, keep_mels=True, progress=False)
    assert not np.allclose(alone[0].mels, other_seed[0].mels)


def test_the_no_feats_baseline_ignores_the_picture(tmp_path, encoder):
    model = tiny_model(encoder, features=False)
    a, b = save_image(tmp_path / "a.png", seed=1), save_image(tmp_path / "b.png", seed=2)
    results = loop.generate(model, [a, b], tmp_path / "out", samples=2, seed=0, progress=False)
    for k in range(2):
        assert results[0].wavs[k].read_bytes() == results[1].wavs[k].read_bytes()


# ---------------------------------------------------------------- self-describing checkpoints

def save_codebook(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save({"state_dict": VQModel(TINY_CODEBOOK).state_dict(), "config": TINY_CODEBOOK.to_dict()}, path)
    return path


def test_check_codebook_refuses_another_codebook(tmp_path):
    first, second = save_codebook(tmp_path / "a.ckpt", 0), save_codebook(tmp_path / "b.ckpt", 1)
    trained_on = codebook_fingerprint(first)
    check_codebook(trained_on, first)
    check_codebook(None, second)  # SpecVQGAN's files carry no fingerprint: nothing to compare
    with pytest.raises(ValueError, match="trained on another codebook.*retrain the transformer"):
        check_codebook(trained_on, second, transformer="best.ckpt")


@pytest.fixture
def trained_run(tmp_path, monkeypatch):
    """A tiny run as the workflow leaves it: results/runs/tiny/best.ckpt (self-describing), its codebook, and a
    config naming both; the current folder is the workflow's."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    codebook = save_codebook(tmp_path / "codebook.ckpt", 0)
    transformer = tiny_transformer()
    ckpt = tmp_path / "results/runs/tiny/best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"format": CKPT_FORMAT, "run_spec": transformer.spec.to_dict(),
                "codebook": codebook_fingerprint(codebook), "feature_stats": None,
                "state_dict": transformer.gpt.state_dict()}, ckpt)
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    architecture = {k: v for k, v in TINY_CODEBOOK.to_dict().items() if k not in ("resolution", "in_channels",
                                                                                 "out_ch", "dropout")}
    config.update(results="results", codebook={"source": "train", "path": str(codebook), "model": architecture})
    config["audio"]["crop_frames"] = CROP_FRAMES
    config["backbones"] = {"resnet18": {"weights": "none", "image_size": 64}}
    config["runs"] = [{"name": "tiny", "features": "resnet18", "feat_sample_size": S, "layers": 1, "heads": 2,
                       "embed": 16}]
    (tmp_path / "config/config.yaml").write_text((REPO / "config/config.yaml").read_text())
    path = tmp_path / "config/tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_run_is_loaded_as_its_checkpoint_describes_it(trained_run):
    model = loading.load_run_model(load_config(trained_run), "tiny", "cpu")
    assert (model.S, model.n_tokens, model.spec.features) == (S, N_TOKENS, "resnet18")
    assert model.encoder.transform.crop == 64 and model.min_image_size == 64


def test_a_run_with_another_codebook_or_backbone_is_refused(trained_run):
    config = load_config(trained_run)
    other = save_codebook(Path("other.ckpt"), 1)
    with pytest.raises(errors.ModelError, match="trained on another codebook"):
        loading.load_run_model({**config, "codebook": {**config["codebook"], "path": str(other)}}, "tiny", "cpu")
    clip_run = [{**config["runs"][0], "features": "clip_vit_b32"}]
    with pytest.raises(errors.ModelError, match="trained on resnet18 features, the config's run tiny says clip_vit_b32"):
        loading.load_run_model({**config, "runs": clip_run}, "tiny", "cpu")


def test_the_workflows_sampling_refuses_another_codebook(trained_run):
    """sample_tokens' job (i2a.sampling.samples.sample_run) checks the codebook on the models it loads, before any data."""
    from i2a.sampling.samples import sample_run
    from i2a.spec.runspec import RunSpec

    config = load_config(trained_run)
    other = save_codebook(Path("other.ckpt"), 1)
    with pytest.raises(ValueError, match="trained on another codebook.*retrain the transformer"):
        sample_run(RunSpec.from_config(config, config["runs"][0]), "results/runs/tiny/best.ckpt", other, [], [],
                   "tokens.npy", "mels.npy", "names.txt", batch_size=4, device="cpu")
    assert not any(Path(p).exists() for p in ("tokens.npy", "mels.npy", "names.txt"))


def test_the_cli_says_how_to_make_a_missing_model(trained_run, caplog):
    image = save_image(Path("x.png"))
    assert cli.main(["generate", "--config", str(trained_run), "--run", "nope", str(image)]) == errors.EXIT_MODEL_ERROR
    assert "no run 'nope' in the config; its runs: tiny" in caplog.text
    caplog.clear()
    Path("results/runs/tiny/best.ckpt").unlink()
    assert cli.main(["generate", "--config", str(trained_run), "--run", "tiny", str(image)]) == errors.EXIT_MODEL_ERROR
    err = caplog.text
    assert f"snakemake --cores 2 --configfile {trained_run} results/runs/tiny/best.ckpt" in err, err


def test_the_cli_generates_and_exits_non_zero_after_a_bad_input(trained_run, caplog):
    good, bad = save_image(Path("good.png")), Path("bad.jpg")
    bad.write_bytes(b"junk")
    code = cli.main(["generate", "--config", str(trained_run), "--run", "tiny", "--out", "gen", "--samples", "2",
                     "--seed", "1", str(bad), str(good)])
    err = caplog.text
    assert code == errors.EXIT_INPUT_ERRORS
    assert "bad.jpg: not a readable image" in err and "1 of 2 inputs generated" in err
    assert sorted(p.name for p in Path("gen").iterdir()) == [loop.MANIFEST, "good_sample00.wav", "good_sample01.wav",
                                                             "good_spectrogram.png"]


def test_the_released_loader_takes_its_shape_from_the_registry_and_the_codebook(tmp_path, monkeypatch):
    # the registry's 24 x 16 x 1024 shape, with the vocabulary and tokens of whatever codebook it is paired with
    cfg = released_config("resnet50_5feat", vocab_size=128, n_tokens=265)
    assert (cfg.layers, cfg.heads, cfg.embed, cfg.feat_dim, cfg.block_size, cfg.vocab_size) == (24, 16, 1024, 2048,
                                                                                               270, 128)
    # a tiny stand-in with 2 heads, saved as SpecVQGAN's Lightning checkpoints are: loaded with 2 heads, not 16
    entry = replace(released_registry.RELEASED["resnet50_5feat"], layers=1, heads=2, embed=16)
    monkeypatch.setitem(released_registry.RELEASED, "resnet50_5feat", entry)
    small = released_config("resnet50_5feat", vocab_size=16, n_tokens=N_TOKENS)
    torch.manual_seed(0)
    reference = GPT(small).eval()
    path = tmp_path / "released.ckpt"
    torch.save({"state_dict": {f"transformer.{k}": v for k, v in reference.state_dict().items()}}, path)
    loaded = load_released_transformer("resnet50_5feat", vocab_size=16, n_tokens=N_TOKENS, path=path)
    gpt = loaded.gpt
    assert gpt.config.heads == 2 and loaded.spec.feat_sample_size == 5 and loaded.spec.features == "resnet50"
    feats, idx = torch.randn(1, 2048, 5), torch.randint(0, 16, (1, 4))
    torch.testing.assert_close(gpt(idx, feats), reference(idx, feats))
    with pytest.raises(ValueError, match="vocab_size: the checkpoint has 16, the run says 32"):
        load_released_transformer("resnet50_5feat", vocab_size=32, n_tokens=N_TOKENS, path=path)
    with pytest.raises(FileNotFoundError, match="snakemake --cores 1 resources/checkpoints/no_feats.ckpt"):
        load_released_transformer("no_feats", vocab_size=128, n_tokens=265, path=tmp_path / "absent.ckpt")


def test_the_cli_names_the_command_that_fetches_a_released_model(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # no resources/ here
    code = cli.main(["generate", "--config", str(REPO / "config/config.yaml"), "--released", "resnet50_1feat",
                     str(save_image(tmp_path / "x.png"))])
    err = caplog.text
    assert code == errors.EXIT_MODEL_ERROR
    assert ("snakemake --cores 1 resources/checkpoints/resnet50_1feat.ckpt resources/checkpoints/vas_codebook.ckpt "
            "resources/checkpoints/melgan.ckpt resources/weights/resnet50-0676ba61.pth") in err, err


def test_the_console_script_is_declared():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["i2a"].split(":")
    assert module == "i2a.cli" and scripts["i2a"] == "i2a.cli:main"
    from i2a.cli import COMMANDS

    assert COMMANDS["generate"][0] == "i2a.sampling.cli" and {"plan", "calibrate"} <= set(COMMANDS)


# ---------------------------------------------------------------- bad sampling values and output folders (issue 26)

@pytest.mark.parametrize("option, value, expected", [
    ("--temperature", "nan", "--temperature: nan is not a finite number"),
    ("--temperature", "inf", "--temperature: inf is not a finite number"),
    ("--temperature", "1e-300", "--temperature: 1e-300 is below 0.001"),
    ("--top-k", "1000", "--top-k: 1000 is larger than the codebook (16 codes)"),
    ("--seed", "1e23", "--seed: '1e23' is not a whole number from 0 to 4294967295"),
    ("--seed", str(10 ** 23), "--seed: 100000000000000000000000 is not a whole number from 0 to 4294967295"),
    ("--seed", "-1", "--seed: -1 is not a whole number from 0 to 4294967295"),
], ids=["nan", "inf", "underflow", "top-k", "seed-1e23", "seed-huge", "seed-negative"])
def test_the_cli_refuses_sampling_values_the_config_refuses(trained_run, caplog, option, value, expected):
    """26.14, 26.17: the config's checks (i2a.spec.config.check_sampling_values), not a constant sound or a traceback."""
    image = save_image(Path("x.png"))
    code = cli.main(["generate", "--config", str(trained_run), "--run", "tiny", "--out", "gen", option, value,
                     str(image)])
    assert code == errors.EXIT_MODEL_ERROR and expected in caplog.text, caplog.text
    assert not Path("gen").exists()


def test_the_config_and_the_cli_share_one_sampling_check():
    from i2a.spec.config import ConfigError, check_sampling_values

    check_sampling_values({"temperature": 1e-3, "top_k": 16, "seed": 2 ** 32 - 1}, n_codes=16)
    with pytest.raises(ConfigError, match=r"config key sampling.temperature: nan is not a finite number"):
        check_sampling_values({"temperature": float("nan")})
    with pytest.raises(ConfigError, match=r"--top-k: 17 is larger than the codebook \(16 codes\)"):
        check_sampling_values({"top_k": 17}, n_codes=16, label=lambda key: "--" + key.replace("_", "-"))


def test_a_negative_seed_for_the_no_feats_baseline_is_refused_by_the_api(tmp_path, encoder):
    """26.17: the no-feats baseline's noise cannot be seeded with a negative number; refused before anything runs."""
    image = save_image(tmp_path / "a.png")
    with pytest.raises(ValueError, match="seed: -3 is not a whole number from 0 to 4294967295"):
        loop.generate(tiny_model(encoder, features=False), [image], tmp_path / "out", seed=-3, progress=False)
    assert not (tmp_path / "out").exists()


def test_samples_beyond_the_batch_size_are_drawn_in_batches(tmp_path, encoder, monkeypatch):
    """26.15: no forward pass holds more rows than --batch-size, whatever --samples is; the sounds are the same."""
    from i2a.models import transformer as transformer_module

    rows = []
    real = transformer_module.sample_tokens

    def counting(model, feats, *args, **kwargs):
        rows.append(len(feats))
        return real(model, feats, *args, **kwargs)

    model = tiny_model(encoder)
    a, b = save_image(tmp_path / "a.png", seed=1), save_image(tmp_path / "b.png", seed=2)
    whole = loop.generate(model, [a, b], tmp_path / "whole", samples=5, seed=2, batch_size=64, keep_mels=True,
                         progress=False)
    monkeypatch.setattr(transformer_module, "sample_tokens", counting)
    batched = loop.generate(model, [a, b], tmp_path / "batched", samples=5, seed=2, batch_size=2, keep_mels=True,
                           progress=False)
    assert max(rows) <= 2 and sum(rows) == 10, rows
    for one, other in zip(whole, batched):
        np.testing.assert_allclose(one.mels, other.mels, atol=1e-5)
        assert [p.name for p in other.wavs] == [f"{one.path.stem}_sample{k:02d}.wav" for k in range(5)]


def test_an_input_folder_is_refused_as_the_output_folder(trained_run, caplog):
    """26.16: --out naming an input's folder would overwrite the user's files and feed the outputs back in."""
    folder = Path("photos")
    folder.mkdir()
    save_image(folder / "a.png")
    mine = folder / "a_sample00.wav"
    mine.write_bytes(b"the user's own recording")
    for inputs in ([str(folder)], [str(folder / "a.png")], ["./photos/"]):
        caplog.clear()
        code = cli.main(["generate", "--config", str(trained_run), "--run", "tiny", "--out", "photos", *inputs])
        assert code == errors.EXIT_MODEL_ERROR and "--out photos holds the inputs" in caplog.text, caplog.text
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_sample00.wav"]
    assert mine.read_bytes() == b"the user's own recording"


def test_a_file_not_written_by_generate_is_never_overwritten(tmp_path, encoder):
    """26.16: an output folder holding the user's own file of an output's name: that input is refused, the file
    kept; a file generate wrote before is replaced."""
    out = tmp_path / "out"
    out.mkdir()
    a, b = save_image(tmp_path / "a.png", seed=1), save_image(tmp_path / "b.png", seed=2)
    (out / "a_spectrogram.png").write_bytes(b"the user's own picture")
    model = tiny_model(encoder)
    first = loop.generate(model, [a, b], out, progress=False)
    assert "would overwrite" in first[0].error and "a_spectrogram.png" in first[0].error
    assert (out / "a_spectrogram.png").read_bytes() == b"the user's own picture"
    assert not (out / "a_sample00.wav").exists() and first[1].error is None
    before = first[1].wavs[0].read_bytes()
    again = loop.generate(model, [b], out, seed=1, progress=False)  # our own outputs are replaced
    assert again[0].error is None and again[0].wavs[0].read_bytes() != before


def test_an_out_that_is_a_file_is_a_clear_error(trained_run, caplog):
    Path("taken").write_text("a file")
    code = cli.main(["generate", "--config", str(trained_run), "--run", "tiny", "--out", "taken",
                     str(save_image(Path("x.png")))])
    assert code == errors.EXIT_MODEL_ERROR and "--out taken is a file, not a folder" in caplog.text, caplog.text
    assert Path("taken").read_text() == "a file"


# ---------------------------------------------------------------- figure, --help, Python API (issue 24.7)

def test_the_spectrogram_figure_is_labelled_one_panel_per_sample_with_its_seed():
    mel = MelSpec(keep_frames=172, crop_frames=CROP_FRAMES)
    mels = np.random.default_rng(0).random((3, N_MELS, CROP_FRAMES)).astype(np.float32)
    fig = loop.spectrogram_figure(mels, [7, 8, 9], mel, "a.png: tiny")
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title(loc="left") for ax in panels] == ["sample 0, seed 7", "sample 1, seed 8", "sample 2, seed 9"]
    assert panels[-1].get_xlabel() == "time (s)" and all(ax.get_ylabel() == "frequency (Hz)" for ax in panels)
    assert panels[0].get_xlim() == pytest.approx((0, CROP_FRAMES * 256 / 22050))  # 1.86 s of sound
    hz = [float(t.get_text()) for t in panels[0].get_yticklabels()]
    assert hz == sorted(hz) and mel.fmin < hz[0] < 200 and 6000 < hz[-1] < mel.fmax  # mel bin centres, low at bottom
    assert fig._suptitle.get_text() == "a.png: tiny"


def test_help_lists_the_runs_of_the_given_config(trained_run, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["generate", "--config", str(trained_run), "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and f"runs of {trained_run} (--run NAME):" in out
    assert "tiny" in out and "resnet18 features, trained" in out, out
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help", "--config", str(REPO / "config/demo.yaml")])
    out = capsys.readouterr().out
    assert all(name in out for name in ["resnet18-s5", "clip-s5", "no-feats"]) and "not trained here yet" in out


def test_the_python_api_returns_the_waveforms_the_cli_writes(trained_run):
    model = loading.load(config=trained_run, run="tiny", device="cpu")
    image = save_image(Path("x.png"), seed=4)
    wave = model.generate(image, seed=4)
    assert wave.dtype == np.float32 and wave.shape == (CROP_FRAMES * 256,) and model.sample_rate == 22050
    np.testing.assert_array_equal(model.generate(Image.open(image), seed=4), wave)  # a PIL image
    np.testing.assert_array_equal(model.generate(np.asarray(Image.open(image)), seed=4), wave)  # an array
    waves = model.generate(str(image), samples=3, seed=4, batch_size=1)
    assert waves.shape == (3, CROP_FRAMES * 256)
    np.testing.assert_array_equal(waves[0], wave)
    assert cli.main(["generate", "--config", str(trained_run), "--run", "tiny", "--out", "gen", "--samples", "3",
                     "--seed", "4", "--batch-size", "1", str(image)]) == 0
    for k in range(3):
        written, _ = soundfile.read(f"gen/x_sample{k:02d}.wav", dtype="float32")
        np.testing.assert_allclose(written, np.clip(waves[k], -1, 1), atol=2 / 32767)
    with pytest.raises(ValueError, match="temperature: nan is not a finite number"):
        model.generate(image, temperature=float("nan"))
    with pytest.raises(errors.InputError, match="uint8 RGB"):
        model.generate(np.zeros((64, 64), np.float32))


# ---------------------------------------------------------------- i2a app (issue 24.8)

@pytest.fixture
def app_server(trained_run):
    """`i2a app` on the tiny trained run, on a free port of 127.0.0.1, serving in a thread."""
    import threading

    from i2a.sampling.app import App, make_server

    model = loading.load(config=trained_run, run="tiny", device="cpu")
    server = make_server(App(model, samples=2, max_upload=2 ** 20, workdir=Path("app")), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def demo_image(path: Path) -> Path:
    """A frame of the demo's data: a synthetic clip's class shape (what README's photo.png is)."""
    from i2a.data.synthetic import class_set, render_clip

    frames, _ = render_clip(class_set(4)[1], np.random.default_rng(23), 1.0, 8.0, 22050, (96, 96))
    Image.fromarray(frames[len(frames) // 2]).save(path)
    return path


def _post(url: str, name: str, data: bytes, fields: dict[str, str] | None = None):
    import urllib.error
    import urllib.request
    import uuid

    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in (fields or {}).items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "/generate", body, {"Content-Type": f"multipart/form-data; boundary="
                                                                               f"{boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_app_says_why_an_upload_cannot_be_used(app_server):
    status, page = _post(app_server, "notes.txt", b"my notes")
    assert status == 400 and "is neither an image" in page
    status, page = _post(app_server, "broken.png", b"not a png")
    assert status == 400 and "not a readable image" in page
    status, page = _post(app_server, "big.png", b"x" * (2 ** 20 + 1))
    assert status == 413 and "more than this page takes" in page
    status, page = _post(app_server, "x.png", save_image(Path("x.png")).read_bytes(), {"seed": "-1"})
    assert status == 400 and "seed: -1 is not a whole number" in page
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(app_server + "/files/00001/../../config/tiny.yaml")
    assert missing.value.code == 404


def test_the_app_generates_sound_for_the_demos_image_in_a_browser(app_server, tmp_path):
    """24.8: Chromium uploads the demo's picture; the page plays WAVs that decode, shows the figure, offers
    downloads."""
    import urllib.request

    from workflow_helpers import headless_chromium

    with headless_chromium(tmp_path) as driver:  # skips without Chromium (then selenium is not needed either)
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        driver.get(app_server + "/")
        driver.find_element(By.ID, "file").send_keys(str(demo_image(tmp_path / "photo.png")))
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, 180).until(lambda d: d.find_elements(By.TAG_NAME, "audio"))
        audio = driver.find_elements(By.TAG_NAME, "audio")
        assert len(audio) == 2
        # the browser itself loads the sound and the figure
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('audio')].every(a => a.readyState >= 1 && a.duration > 1)"
            " && document.getElementById('spectrogram').naturalWidth > 0"))
        for element in audio:
            with urllib.request.urlopen(element.get_attribute("src")) as response:
                wav, rate = soundfile.read(io.BytesIO(response.read()), dtype="float32")
            assert rate == 22050 and len(wav) == CROP_FRAMES * 256 and np.abs(wav).max() > 0
        links = driver.find_elements(By.CSS_SELECTOR, "a[download]")
        assert [link.get_attribute("download") for link in links] == ["photo_sample00.wav", "photo_sample01.wav"]


def test_generate_computes_in_the_configs_precisions_and_logs_them(trained_run, monkeypatch, caplog):
    """i2a generate sets features.precision for the backbone and sampling.precision for the GPT, as the workflow's
    jobs do, and says so; a bf16 sampler is handed the bf16 dtype."""
    import logging

    import i2a.infra.precision
    import i2a.models.transformer as transformer_module

    config = yaml.safe_load(trained_run.read_text())
    config["features"]["precision"] = "tf32"
    config["sampling"]["precision"] = "bf16"
    trained_run.write_text(yaml.safe_dump(config))
    seen = []
    real_set, real_sample = i2a.infra.precision.set_precision, transformer_module.sample_tokens
    for module in (inputs, loop):  # the backbone's precision, then the sampler's
        monkeypatch.setattr(module, "set_precision", lambda name: (seen.append(name), real_set(name))[1])
    monkeypatch.setattr(transformer_module, "sample_tokens",
                        lambda *a, **kw: (seen.append(kw["dtype"]), real_sample(*a, **kw))[1])
    caplog.set_level(logging.INFO, logger="i2a.sampling")
    model = loading.load(config=str(trained_run), run="tiny")
    try:
        model.generate(save_image(Path("x.png")))
    finally:
        real_set("fp32")
    assert seen[:3] == ["tf32", "bf16", torch.bfloat16], seen
    assert "features precision: tf32" in caplog.text and "sampling precision: bf16" in caplog.text, caplog.text


def test_a_config_with_batch_size_auto_generates(trained_run):
    """`sampling.batch_size: auto` (the workflow sizes it from the GPU's memory) is sized the same way here."""
    config = yaml.safe_load(trained_run.read_text())
    config["sampling"]["batch_size"] = "auto"
    trained_run.write_text(yaml.safe_dump(config))
    model = loading.load(config=str(trained_run), run="tiny")
    waves = model.generate(save_image(Path("x.png")), samples=2)
    assert waves.shape[0] == 2 and np.isfinite(waves).all()
