"""The transformer matches SpecVQGAN's GPTFeats (keys, shapes, logits) and both samplers agree."""
import json

import numpy as np
import pytest
import torch

from conftest import shared_path
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from i2a.models.condition import random_features
from i2a.models.gpt import GPT, TokenSampler, bucket_schedule, kv_cache_bytes, rows_by_video, sample_tokens
from i2a.models.transformer import LoadedTransformer, load_transformer
from i2a.spec.frames import sample_frame_indices
from i2a.spec.runspec import GPTConfig, RunSpec

TINY = GPTConfig(vocab_size=32, block_size=24, layers=2, heads=2, embed=16, feat_dim=6)


def _reference():
    ref = torch.load(shared_path("interop", "gpt_small.pt"), weights_only=True)
    sd = {k: v.float() for k, v in ref["state_dict"].items()}
    return ref, sd


def test_state_dict_matches_specvqgan_manifest():
    manifest = json.loads(shared_path("interop", "state_dict_manifest.json").read_text())
    expected = [(k.removeprefix("transformer."), v) for k, v in manifest["gpt_vas_transformer_resnet50"].items()]
    with torch.device("meta"):
        model = GPT(GPTConfig())
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == expected
    assert model.blocks[0].attn.mask.shape == (1, 1, 477, 477)


def test_logits_match_reference_forward():
    ref, sd = _reference()
    model = GPT(GPTConfig.from_dict(ref["config"]))
    model.load_state_dict(sd, strict=True)
    model.eval()
    with torch.no_grad():
        logits = model(ref["inputs"]["idx"], ref["inputs"]["feats"])
    assert logits.shape == ref["outputs"]["logits"].shape == (2, 5 + 264, 128)
    assert (logits - ref["outputs"]["logits"]).abs().max().item() < 1e-4


def test_fresh_init_follows_mingpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(layers=2, heads=4, embed=64, block_size=270))
    assert torch.count_nonzero(model.pos_emb) == 0
    assert model.head.bias is None
    assert abs(model.blocks[0].attn.key.weight.std().item() - 0.02) < 2e-3
    assert torch.count_nonzero(model.blocks[0].attn.key.bias) == 0
    # the Conv1d embedder keeps PyTorch's default init (SpecVQGAN creates it after the N(0, 0.02) init)
    assert model.embedder.weight.abs().max().item() <= 1 / np.sqrt(2048) + 1e-6
    assert model.embedder.weight.std().item() < 0.015


def test_load_transformer_specvqgan_lightning_checkpoint(tmp_path):
    ref, sd = _reference()
    ckpt = {"state_dict": {**{f"transformer.{k}": v.half() for k, v in sd.items()},
                           "first_stage_model.quantize.embedding.weight": torch.zeros(128, 256)},
            "epoch": 3}
    path = tmp_path / "specvqgan.ckpt"
    torch.save(ckpt, path)
    cfg = GPTConfig.from_dict(ref["config"])
    loaded = load_transformer(path, cfg)
    assert loaded.spec is None and loaded.feature_stats is None  # a SpecVQGAN file does not describe itself
    model = loaded.gpt
    assert not model.training
    with torch.no_grad():
        logits = model(ref["inputs"]["idx"], ref["inputs"]["feats"])
    assert (logits - ref["outputs"]["logits"]).abs().max().item() < 1e-4
    # without a config the sizes are read from the shapes (head count must then be given when not 16)
    inferred = load_transformer(path, None).gpt
    assert (inferred.config.layers, inferred.config.block_size, inferred.config.feat_dim) == (2, 270, 2048)


def test_load_transformer_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_transformer(tmp_path / "nope.ckpt")


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(TINY)
    # a trained-looking model: large enough logits that the samples depend on the input
    with torch.no_grad():
        model.head.weight.mul_(40)
    return model.eval()


def test_cached_sampler_equals_full_recompute():
    model = _tiny_model()
    feats = torch.randn(3, 6, 4)
    seeds = [11, 12, 13]
    plain = sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=seeds, cache=False)
    cached = sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=seeds, cache=True)
    assert plain.shape == (3, 20) and plain.dtype == torch.long
    assert torch.equal(plain, cached)
    # the bucketed step (what CUDA captures as one graph per bucket) gives them too
    bucketed = sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=seeds, cache=True, bucket=8)
    assert torch.equal(plain, bucketed)
    assert 0 <= int(cached.min()) and int(cached.max()) < TINY.vocab_size
    # the conditioning matters and different seeds differ
    other = sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=[21, 22, 23])
    assert not torch.equal(other, cached)


def test_sampling_standardises_features_as_training_did():
    """A run trained with `feature_norm: standard` carries its statistics; its loaded transformer takes features as
    extracted and standardises them with those, exactly as model_inputs does in training, because its spec says so."""
    from i2a.training.gpt import model_inputs

    model = _tiny_model(8)
    feats = torch.randn(3, 6, 4) * 5 + 2
    mean, std = torch.randn(6), torch.rand(6) + 0.5
    _, trained_on = model_inputs((torch.zeros(3, 2, dtype=torch.int16), feats.transpose(1, 2)), mean, std)
    expected = sample_tokens(model, trained_on, 20, top_k=8, temperature=1.0, seeds=[1, 2, 3])
    spec = RunSpec(name="standard", features="resnet18", feat_sample_size=4, feature_norm="standard", model=TINY)
    loaded = LoadedTransformer(model, spec, feature_stats={"mean": mean, "std": std})
    assert torch.equal(loaded.sample(feats, 20, top_k=8, temperature=1.0, seeds=[1, 2, 3]), expected)
    assert torch.equal(loaded.sample(feats, 20, top_k=8, temperature=1.0, seeds=[1, 2, 3], cache=False), expected)
    assert not torch.equal(sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=[1, 2, 3]), expected)
    raw = LoadedTransformer(model, RunSpec(name="raw", features="resnet18", feat_sample_size=4, model=TINY))
    assert torch.equal(raw.sample(feats, 20, top_k=8, temperature=1.0, seeds=[1, 2, 3]),
                       sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=[1, 2, 3]))


def test_a_loaded_transformer_has_statistics_exactly_when_its_run_standardises():
    model = _tiny_model()
    with pytest.raises(ValueError, match="'standard' needs feature statistics exactly when"):
        LoadedTransformer(model, RunSpec(name="s", features="resnet18", feat_sample_size=4, feature_norm="standard",
                                         model=TINY))
    with pytest.raises(ValueError, match="'raw' needs feature statistics exactly when"):
        LoadedTransformer(model, RunSpec(name="r", features="resnet18", feat_sample_size=4, model=TINY),
                          feature_stats={"mean": torch.zeros(6), "std": torch.ones(6)})


@pytest.mark.parametrize("bucket", [0, 8])
def test_rows_do_not_depend_on_their_batch(bucket):
    model = _tiny_model(1)
    feats = torch.randn(4, 6, 4)
    together = sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=[1, 2, 3, 4], bucket=bucket)
    alone = torch.cat([sample_tokens(model, feats[i:i + 1], 20, top_k=8, temperature=1.0, seeds=[s], bucket=bucket)
                       for i, s in enumerate([1, 2, 3, 4])])
    assert torch.equal(together, alone)
    swapped = sample_tokens(model, feats[[2, 0]], 20, top_k=8, temperature=1.0, seeds=[3, 1], bucket=bucket)
    assert torch.equal(swapped, together[[2, 0]])


def _model_for(S, n_tokens=20, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=32, block_size=S + n_tokens - 1, layers=2, heads=2, embed=16, feat_dim=6))
    with torch.no_grad():
        model.head.weight.mul_(40)
    return model.eval()


@pytest.mark.parametrize("S", [1, 5, 212])
def test_shared_prefix_gives_the_full_recomputes_tokens(S):
    """3 videos with 4, 2 and 3 samples, rows out of video order: the prefix computed once per video (cascade
    attention, merged by log-sum-exp) draws the full recompute's tokens, exactly and in buckets, and the same as
    every row keeping its own prefix; each row with its own seed."""
    model = _model_for(S)
    feats = torch.randn(3, 6, S)
    video_of_row = torch.tensor([0, 1, 0, 2, 0, 2, 1, 0, 2])
    seeds = [7 * r + 1 for r in range(9)]
    full = sample_tokens(model, feats[video_of_row], 20, top_k=8, temperature=1.0, seeds=seeds, cache=False)
    for bucket in (0, 8, 32):
        assert torch.equal(sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=seeds, video_of_row=video_of_row,
                                         bucket=bucket), full), bucket
    # found from the rows' features when not given, and the per-row prefix (the sampler before) agrees
    assert torch.equal(sample_tokens(model, feats[video_of_row], 20, top_k=8, temperature=1.0, seeds=seeds), full)
    assert torch.equal(sample_tokens(model, feats[video_of_row], 20, top_k=8, temperature=1.0, seeds=seeds, share_prefix=False), full)
    # the samples of one video depend on the video, not only on the seed
    assert not torch.equal(full[0], sample_tokens(model, feats[1:2], 20, top_k=8, temperature=1.0, seeds=seeds[:1])[0])


def test_batches_that_split_a_videos_samples_give_the_same_tokens():
    """2 videos x 5 samples sampled at once, and in batches of 3 rows that cut through the videos' groups."""
    model = _model_for(5, seed=3)
    feats = torch.randn(2, 6, 5)
    video_of_row = torch.arange(2).repeat_interleave(5)
    seeds = list(range(100, 110))
    whole = sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=seeds, video_of_row=video_of_row)
    pieces = torch.cat([sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=seeds[i:i + 3],
                                      video_of_row=video_of_row[i:i + 3], bucket=8) for i in range(0, 10, 3)])
    assert torch.equal(whole, pieces)
    assert torch.equal(whole, sample_tokens(model, feats[video_of_row], 20, top_k=8, temperature=1.0, seeds=seeds, cache=False))


def test_the_prefix_is_kept_once_per_video():
    model = _model_for(5)
    video_of_row = torch.tensor([0, 0, 0, 1, 1, 1])
    sampler = TokenSampler(model, 5, torch.rand(6, 20), video_of_row, top_k=8, temperature=1.0)
    assert sampler.prefix_k.shape[:2] == (2, 2) and sampler.prefix_k.shape[3] == 5  # layers, videos, heads, S
    assert sampler.k.shape[:2] == (2, 6) and sampler.k.shape[3] == 32  # own: 19 tokens in 16-slot blocks
    unique, index = rows_by_video(torch.randn(2, 6, 5)[video_of_row])
    assert unique.shape == (2, 6, 5) and index.tolist() in ([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])
    cfg = GPTConfig(layers=24)  # the study's: one prefix per video instead of one per sample
    shared = kv_cache_bytes(cfg, rows=100, videos=1, S=212, n_tokens=265, dtype=torch.bfloat16)
    per_row = kv_cache_bytes(cfg, rows=100, videos=100, S=212, n_tokens=265, dtype=torch.bfloat16)
    assert shared == 2 * 24 * (212 + 100 * 320) * 1024 * 2 and per_row > 1.6 * shared


def test_bucket_schedule():
    """Step t reads its t filled slots rounded up to the bucket: 264 steps of the 265-token VAS grid in 5 graphs."""
    assert bucket_schedule(265, 64) == [(64, 64), (128, 64), (192, 64), (256, 64), (320, 8)]
    assert bucket_schedule(6, 0) == [(1, 1), (2, 1), (3, 1), (4, 1), (5, 1)]
    assert bucket_schedule(33, 32) == [(32, 32)] and bucket_schedule(1, 32) == []
    assert sum(steps for _, steps in bucket_schedule(265, 32)) == 264
    with pytest.raises(ValueError):
        bucket_schedule(10, -1)


def test_large_batch_rows_match_small_batches():
    """300 rows (another matmul blocking than 3 rows) give each row the tokens it gets in a batch of 3."""
    model = _tiny_model(4)
    feats = torch.randn(300, 6, 4)
    seeds = list(range(100, 400))
    big = sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=seeds, bucket=8)
    for rows in ([0, 1, 2], [150, 151, 299]):
        assert torch.equal(big[rows], sample_tokens(model, feats[rows], 20, top_k=8, temperature=1.0, seeds=[seeds[r] for r in rows]))


class _RecordOps(TorchDispatchMode):
    """Every aten op with its tensors' shapes, strides and dtypes and its other arguments."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        self.ops.append((str(func), [(tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a
                                     for a in flat]))
        return func(*args, **kwargs)


def _step_ops(sampler, keys):
    with torch.no_grad(), _RecordOps() as rec:
        sampler.step(keys)
    return rec.ops


def test_steps_of_one_bucket_run_the_same_ops_on_the_same_shapes():
    """What a CUDA graph per bucket needs: the steps of one bucket run identical ops with identical shapes and
    arguments; the next bucket reads more slots (another graph); exact slices change every step (the CPU's)."""
    model = _tiny_model(5)
    feats, u = torch.randn(3, 6, 4), torch.rand(3, 12)
    sampler = TokenSampler(model, 4, u, top_k=8, temperature=1.0, bucket=4)
    with torch.no_grad():
        sampler.prefill(feats)
    first = _step_ops(sampler, 4)  # step 1 of bucket (1..4]
    assert any("index_copy" in op for op, _ in first) and any("topk" in op for op, _ in first)
    sampler.step(4)
    assert _step_ops(sampler, 4) == first  # step 3
    sampler.step(4)
    assert _step_ops(sampler, 8) != first  # step 5: the next bucket
    exact = TokenSampler(model, 4, u, top_k=8, temperature=1.0, bucket=0)
    with torch.no_grad():
        exact.prefill(feats)
    assert _step_ops(exact, 1) != _step_ops(exact, 2)


def test_sampler_linears_are_reordered_for_onednn_on_the_cpu():
    """The CPU decode step's speed comes from weights reordered once for oneDNN; their products are F.linear's."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    model = _tiny_model(7)
    sampler = TokenSampler(model, 4, torch.rand(3, 12), top_k=8, temperature=1.0)
    block = model.blocks[0]
    for lin, ref in ((sampler.layers[0].fc, block.mlp[0]), (sampler.layers[0].out, block.mlp[2]),
                     (sampler.head, model.head)):
        assert lin.packed is not None
        x = torch.randn(3, 1, ref.in_features)
        with torch.no_grad():
            torch.testing.assert_close(lin(x), ref(x), rtol=1e-5, atol=1e-5)
    bf16 = TokenSampler(model, 4, torch.rand(3, 12), top_k=8, temperature=1.0, dtype=torch.bfloat16)
    assert bf16.layers[0].fc.packed is None  # bf16 goes through F.linear


def test_bf16_sampling_runs():
    model = _tiny_model(6)
    feats = torch.randn(2, 6, 4)
    tokens = sample_tokens(model, feats, 20, top_k=8, temperature=1.0, seeds=[1, 2], dtype=torch.bfloat16, bucket=8)
    assert tokens.shape == (2, 20) and 0 <= int(tokens.min()) and int(tokens.max()) < TINY.vocab_size


def test_first_token_comes_from_last_condition_position():
    """logits[:, S-1] predicts token 1: with top_k=1, temperature=1.0 the first sampled token is its argmax."""
    model = _tiny_model(2)
    feats = torch.randn(2, 6, 3)
    tokens = sample_tokens(model, feats, 5, top_k=1, temperature=1.0, seeds=[0, 1])
    with torch.no_grad():
        logits = model(tokens[:, :-1], feats)
    assert logits.shape == (2, 3 + 4, TINY.vocab_size)
    assert torch.equal(logits[:, 3 - 1:].argmax(-1), tokens)


def test_top_k_restricts_support():
    model = _tiny_model(3)
    feats = torch.randn(1, 6, 2)
    with torch.no_grad():
        allowed = set(torch.topk(model(torch.zeros(1, 0, dtype=torch.long), feats)[0, -1], 3).indices.tolist())
    firsts = {int(sample_tokens(model, feats, 1, top_k=3, temperature=1.0, seeds=[s])[0, 0]) for s in range(60)}
    assert firsts <= allowed and len(firsts) >= 2


def test_sampler_rejects_bad_input():
    model = _tiny_model()
    with pytest.raises(ValueError, match="seed"):
        sample_tokens(model, torch.randn(2, 6, 4), 5, top_k=8, temperature=1.0, seeds=[1])
    with pytest.raises(ValueError, match="block_size"):
        sample_tokens(model, torch.randn(1, 6, 10), 20, top_k=8, temperature=1.0, seeds=[1])


def test_random_features_are_uniform_and_seeded():
    a, b = random_features(4, 64, 1, seed=5), random_features(4, 64, 1, seed=5)
    assert a.shape == (4, 64, 1) and torch.equal(a, b)
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean().item() - 0.5) < 0.1
