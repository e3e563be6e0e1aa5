"""Backbone registry, preprocessing and weight files (design.md §3)."""
import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T

from i2a.features.backbones import WeightsNotFoundError, build_backbone, fetch_weights
from i2a.infra.checksum import ChecksumError, file_digest, verify_file
from i2a.spec.backbones import BACKBONES, CLIP_PREPROCESS, VIDEO_FEATURES_CNN, weights_file

EXPECTED_DIMS = {"resnet18": 512, "resnet50": 2048, "efficientnet_v2_s": 1280, "efficientnet_v2_m": 1280,
                 "efficientnet_v2_l": 1280, "clip_vit_b32": 512, "clip_vit_b16": 512}


def _frames(t=3, h=90, w=160, seed=0):
    """Noise plus a gradient: the hardest case for matching a resampler."""
    rng = np.random.default_rng(seed)
    grad = np.linspace(0, 255, w)[None, :, None]
    return np.clip(rng.integers(0, 256, (t, h, w, 3)) * 0.5 + grad * 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", sorted(EXPECTED_DIMS))
def test_every_backbone_builds_and_gives_its_feature_dim(name):
    torch.manual_seed(0)
    bb = build_backbone(name, weights="none", image_size=64)
    assert bb.feat_dim == EXPECTED_DIMS[name] == BACKBONES[name].feat_dim
    assert not bb.model.training
    x = bb.transform(_frames(t=2))
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    with torch.inference_mode():
        y = bb.model(x)
    assert y.shape == (2, EXPECTED_DIMS[name])
    assert torch.isfinite(y).all() and y.std() > 0


@pytest.mark.parametrize("tf, mode", [(VIDEO_FEATURES_CNN, T.InterpolationMode.BILINEAR),
                                      (CLIP_PREPROCESS, T.InterpolationMode.BICUBIC)])
def test_transform_matches_the_per_frame_pil_pipeline(tf, mode):
    # video_features / CLIP: ToPILImage -> Resize(shorter side) -> CenterCrop -> ToTensor -> Normalize, per frame
    reference = T.Compose([T.ToPILImage(), T.Resize(tf.resize, interpolation=mode), T.CenterCrop(tf.crop),
                           T.ToTensor(), T.Normalize(tf.mean, tf.std)])
    frames = _frames(t=2, h=180, w=320)
    expected = torch.stack([reference(f) for f in frames])
    got = tf(frames)
    assert got.shape == expected.shape == (2, 3, 224, 224)
    # in 0..255 pixel units: at most one grey level off (rounding inside the resampler)
    err = ((got - expected).abs() * torch.tensor(tf.std).view(1, 3, 1, 1) * 255)
    assert err.max() <= 1.0 + 1e-4 and err.mean() < 0.05
    # channels-first input gives the same result
    assert torch.equal(tf(torch.from_numpy(frames).permute(0, 3, 1, 2)), got)


def test_transform_geometry_and_bad_input():
    tf = VIDEO_FEATURES_CNN
    assert (tf.resize, tf.crop, tf.interpolation) == (256, 224, "bilinear")
    small = tf.scaled(112)
    assert (small.resize, small.crop) == (128, 112)
    # a portrait clip: shorter side (width) to 256, then the centre 224 x 224
    frame = np.zeros((1, 200, 100, 3), np.uint8)
    frame[:, 95:105] = 255  # a white band across the middle rows
    crop = tf.resize_crop(frame)
    assert crop.shape == (1, 3, 224, 224) and crop.dtype == torch.uint8
    rows = crop[0, 0].float().mean(dim=1)
    assert rows[112] > 200 and rows[0] < 10 and rows[-1] < 10
    with pytest.raises(ValueError, match="uint8"):
        tf(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="colour channels"):
        tf(np.zeros((1, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="multiple of its 32-px patches"):
        build_backbone("clip_vit_b32", "none", image_size=48)


def test_missing_weights_error_names_file_place_and_command(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        build_backbone("resnet50", cache_dir=tmp_path)  # default = ImageNet V1, what the authors used
    msg = str(err.value)
    assert "resnet50-0676ba61.pth" in msg and str(tmp_path) in msg
    assert f"snakemake --cores 1 {tmp_path / 'resnet50-0676ba61.pth'}" in msg
    with pytest.raises(WeightsNotFoundError, match="clip_vit_b32_openai.safetensors"):
        build_backbone("clip_vit_b32", "openai", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="accepts weights"):
        build_backbone("resnet18", "imagenet_v2")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet34")


def test_weights_file_for():
    assert weights_file("resnet50") == "resources/weights/resnet50-0676ba61.pth"
    assert weights_file("resnet50", "imagenet_v2", "w") == "w/resnet50-11ad3fa6.pth"
    assert weights_file("clip_vit_b32") == "resources/weights/clip_vit_b32_openai.safetensors"
    assert weights_file("resnet18", "none") is None
    assert weights_file("resnet18", "/data/my.pth") == "/data/my.pth"
    # torchvision names its files <arch>-<first 8 hex digits of the SHA-256>.pth
    for entry in BACKBONES.values():
        for wf in entry.weights.values():
            if entry.builder == "torchvision":
                assert wf.url.endswith("/" + wf.filename)
                assert wf.filename.split("-")[-1] == wf.sha256 + ".pth"
            else:  # OpenCLIP's safetensors files: full SHA-256 digests
                assert wf.url.endswith("/open_clip_model.safetensors") and len(wf.sha256) == 64


def test_checksum_verification(tmp_path):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"i2a" * 1000)
    digest = file_digest(f, "sha256")
    verify_file(f, digest, "sha256")
    verify_file(f, digest[:8].upper(), "sha256")  # torchvision-style prefix
    with pytest.raises(ChecksumError, match="does not match"):
        verify_file(f, "0" * 8, "sha256")
    assert not f.exists() and (tmp_path / "blob.bin.bad").exists()  # set aside, never read again
    # a corrupt cached file is refused both when building and when "fetching" (no download is attempted)
    bad = tmp_path / "resnet18-f37072fd.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(ChecksumError):
        build_backbone("resnet18", "imagenet_v1", cache_dir=tmp_path)
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(ChecksumError):
        fetch_weights("resnet18", "imagenet_v1", cache_dir=tmp_path)


def test_weights_from_a_path_reproduce_the_source_model(tmp_path):
    torch.manual_seed(1)
    src = torchvision.models.resnet18().eval()
    path = tmp_path / "mine.pth"
    torch.save(src.state_dict(), path)
    bb = build_backbone("resnet18", str(path), image_size=64)
    x = bb.transform(_frames(t=2))
    src.fc = torch.nn.Identity()
    with torch.inference_mode():
        assert torch.allclose(bb.model(x), src(x), atol=1e-5)
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet50().state_dict(), wrong)
    with pytest.raises(ValueError, match="do not fit"):
        build_backbone("resnet18", str(wrong))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_clip_safetensors_give_the_features_of_openais_torchscript_release(tmp_path):
    """OpenAI publishes CLIP as a TorchScript archive of fp16 weights; OpenCLIP publishes the same tensors as a
    plain fp32 safetensors state dict, which is what the registry fetches. Random weights saved both ways give
    the same features (the TorchScript side read with torch.jit.load, only here in the test)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(3)
    src = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    src = src.half().float()  # OpenAI's release holds fp16 values
    frames = _frames(t=2, h=240, w=320)
    x = CLIP_PREPROCESS(frames)
    scripted = torch.jit.trace(src.visual, x[:1], check_trace=False)
    torch.jit.save(scripted, str(tmp_path / "ViT-B-32.pt"))
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    bb = build_backbone("clip_vit_b32", str(tmp_path / "clip.safetensors"))
    with torch.inference_mode():
        reference = torch.jit.load(str(tmp_path / "ViT-B-32.pt")).eval()(x)
        assert torch.allclose(bb.model(bb.transform(frames)), reference, atol=1e-5)


def test_clip_weights_in_openai_layout_load_and_give_encode_image(tmp_path):
    import open_clip

    torch.manual_seed(2)
    src = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    sd = src.state_dict()
    # OpenAI's archive also carries these scalars, which the model does not have
    sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "clip.pt"
    torch.save(sd, path)
    bb = build_backbone("clip_vit_b32", str(path))
    x = bb.transform(_frames(t=2, h=240, w=320))
    with torch.inference_mode():
        assert torch.allclose(bb.model(x), src.encode_image(x), atol=1e-5)  # not L2-normalised


def test_random_init_is_the_same_network_in_every_job():
    """Shards are extracted in separate jobs: with weights 'none' they must still share one network."""
    import torch

    from i2a.features.backbones import build_backbone

    torch.manual_seed(123)
    first = build_backbone("resnet18", "none", image_size=64).model.state_dict()
    torch.manual_seed(456)
    second = build_backbone("resnet18", "none", image_size=64).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_building_a_random_backbone_leaves_the_global_rng_alone():
    import torch

    from i2a.features.backbones import build_backbone

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_backbone("resnet18", "none", image_size=64)
    assert torch.equal(torch.rand(3), expected)


def test_clip_in_fp16_as_the_study_extracted_its_features(tmp_path, monkeypatch):
    """The study's CLIP features were computed in fp16 (OpenAI's clip.load on a GPU: fp16 weights and activations,
    LayerNorm in fp32). The registry's openai_fp16 is the same weights file as openai, run that way: the features
    of OpenCLIP's own fp16 model, close to fp32's but not the same."""
    import dataclasses

    import open_clip
    from safetensors.torch import save_file

    from i2a.features.extract import extract_clip_features
    from i2a.spec import backbones as registry

    entry = BACKBONES["clip_vit_b32"]
    half_file, full_file = entry.weights["openai_fp16"], entry.weights["openai"]
    assert dataclasses.replace(half_file, dtype="float32") == full_file and half_file.dtype == "float16"
    assert registry.WEIGHTS_FILES.count(full_file.filename) == 1  # one file, fetched once
    torch.manual_seed(5)
    src = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    path = tmp_path / full_file.filename
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    sha = file_digest(path, "sha256")
    monkeypatch.setitem(BACKBONES, "clip_vit_b32", dataclasses.replace(
        entry, weights={name: dataclasses.replace(wf, sha256=sha) for name, wf in entry.weights.items()}))
    half = build_backbone("clip_vit_b32", "openai_fp16", cache_dir=tmp_path)
    full = build_backbone("clip_vit_b32", "openai", cache_dir=tmp_path)
    assert (half.model.conv1.weight.dtype, half.model.ln_pre.weight.dtype) == (torch.float16, torch.float32)
    assert full.model.conv1.weight.dtype == torch.float32
    frames = _frames(t=3, h=240, w=320)
    got_half, got_full = extract_clip_features(half, frames), extract_clip_features(full, frames)
    assert got_half.dtype == got_full.dtype == np.float32 and got_half.shape == (3, 512)
    reference = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None, precision="fp16").eval()
    reference.load_state_dict(src.state_dict())
    with torch.inference_mode():
        expected = reference.encode_image(CLIP_PREPROCESS(frames).half()).float().numpy()
    np.testing.assert_allclose(got_half, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).mean())
    assert not np.array_equal(got_half, got_full)
    np.testing.assert_allclose(got_half, got_full, atol=0.05 * np.abs(got_full).mean())
