"""Reproducing SpecVQGAN's numbers: released transformers checked against the runs that name them (at planning and
when fetched), the published numbers beside the measured ones, and the numerical switches (feature precision and
storage, training precision, the LR finder) rerunning exactly what they change."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO
from loopback import serve, tar_bytes
from i2a.spec import released as registry
from i2a.spec.config import ConfigError, validate_config
from workflow_helpers import copy_workflow, planned_jobs, snakemake

SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
STUDY = yaml.safe_load((REPO / "config/config.yaml").read_text())


def study(**run_changes) -> dict:
    """The study config with the 5-feats reproduction row changed."""
    config = copy.deepcopy(STUDY)
    row = next(r for r in config["runs"] if r.get("released") == "resnet50_5feat")
    row.update(run_changes)
    return config


# ---------------------------------------------------------------- the released rows
def test_the_study_has_every_released_vas_transformer_at_its_published_sample_count():
    from i2a.spec.runspec import RunSpec

    config = validate_config(copy.deepcopy(STUDY), SCHEMA)
    rows = {r["released"]: RunSpec.from_config(config, r) for r in config["runs"] if r["source"] == "released"}
    assert sorted(rows) == ["no_feats", "resnet50_1feat", "resnet50_212feat", "resnet50_5feat"]
    assert {name: spec.sampling.samples_per_video for name, spec in rows.items()} == {
        "resnet50_1feat": 10, "resnet50_5feat": 10, "resnet50_212feat": 10, "no_feats": 100}
    assert {name: (registry.released(name).published.FID, registry.released(name).published.KL)
            for name in rows} == {"resnet50_1feat": (25.1, 6.3), "resnet50_5feat": (20.9, 6.1),
                                  "resnet50_212feat": (22.6, 5.8), "no_feats": (28.7, 9.2)}


def test_the_study_plans_sampling_and_scoring_of_every_reproduction_row():
    """`snakemake -n` on the study config: each released transformer is fetched (on the login node), sampled,
    vocoded, scored and compared with the baseline; none is trained."""
    import re

    result = snakemake("-n", "results/table.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = set(planned_jobs(result.stdout))
    fetched = set(re.findall(r"wildcards: name=(\w+), ext=ckpt", result.stdout))
    for row in STUDY["runs"]:
        if row.get("source") != "released":
            continue
        name = row["name"]
        assert row["released"] in fetched
        assert {("sample_tokens", f"{name}/samples"), ("vocode", name), ("score_samples", f"{name}/samples")} <= jobs
        assert ("train_gpt", name) not in jobs
        if row["features"] != "none":  # the baseline itself
            assert ("compare_with_baseline", f"{name}/samples") in jobs


@pytest.mark.parametrize("change, message", [
    ({"heads": 8}, "heads: the run says 8, the checkpoint has 16"),
    ({"layers": 12}, "layers: the run says 12, the checkpoint has 24"),
    ({"embed": 512, "heads": 8}, "embed: the run says 512, the checkpoint has 1024"),
    ({"feat_sample_size": 212}, "feat_sample_size: the run says 212, the checkpoint has 5"),
    ({"features": "resnet18"}, "features: the run says resnet18, the checkpoint has resnet50"),
])
def test_a_released_row_that_does_not_describe_its_checkpoint_stops_planning(change, message):
    with pytest.raises(ConfigError, match="released transformer resnet50_5feat does not match the run") as error:
        validate_config(study(**change), SCHEMA)
    assert message in str(error.value)


def test_planning_checks_the_run_against_what_the_fetched_checkpoint_says(tmp_path, monkeypatch):
    """Once fetched, the checkpoint's own description (written by fetch_checkpoint) is what the run must match."""
    monkeypatch.chdir(tmp_path)
    entry = registry.released("resnet50_5feat")
    validate_config(study(), SCHEMA)  # the registry's description: it matches
    Path(entry.description_path).parent.mkdir(parents=True)
    Path(entry.description_path).write_text(json.dumps({"features": "resnet50", "feat_sample_size": 5, "layers": 24,
                                                        "heads": 8, "embed": 1024}))
    with pytest.raises(ConfigError, match="heads: the run says 16, the checkpoint has 8"):
        validate_config(study(), SCHEMA)


def transformer_archive(stamp: str, n_head: int = 16, S: int = 5) -> bytes:
    """A released transformer archive in miniature: SpecVQGAN's layout, its project config, a stand-in checkpoint."""
    config = {"model": {"params": {"transformer_config": {"params": {"GPT_config": {
        "vocab_size": 128, "block_size": 265 + S, "n_layer": 24, "n_head": n_head, "n_embd": 1024}}}}},
        "data": {"params": {"rgb_feats_dir_path": "./data/vas/features/*/feature_resnet50_dim2048_21.5fps",
                            "feat_sampler_cfg": {"params": {"feat_sample_size": S}}}}}
    members = {f"logs/{stamp}_vas_transformer/checkpoints/epoch_010.ckpt": b"weights",
               f"logs/{stamp}_vas_transformer/configs/{stamp}-project.yaml": yaml.safe_dump(config).encode()}
    return tar_bytes(members, gzip=True)


@pytest.fixture()
def archive_server():
    """Serves `archive_server.payload` (set by the test) as model.tar.gz."""
    state = SimpleNamespace(payload=b"")
    with serve(lambda path, range_header: (200, state.payload, "application/octet-stream")) as base:
        state.url = f"{base}/model.tar.gz"
        yield state


@pytest.mark.parametrize("n_head, fits", [(16, True), (8, False)])
def test_fetching_a_released_transformer_checks_it_and_records_what_it_is(archive_server, tmp_path, monkeypatch,
                                                                          n_head, fits):
    archive_server.payload = transformer_archive("2021-07-29T14-51-25", n_head=n_head)
    entry = dataclasses.replace(registry.released("resnet50_5feat"), md5=hashlib.md5(archive_server.payload).hexdigest())
    monkeypatch.setitem(registry.RELEASED, "resnet50_5feat", entry)
    dest = tmp_path / "resnet50_5feat.ckpt"
    if not fits:
        with pytest.raises(ValueError, match="heads: the checkpoint has 8, i2a/spec/released.py says 16"):
            registry.fetch_released("resnet50_5feat", dest, url=archive_server.url)
        assert not dest.exists()
        return
    registry.fetch_released("resnet50_5feat", dest, url=archive_server.url)
    assert dest.read_bytes() == b"weights"
    assert json.loads(dest.with_suffix(".json").read_text()) == {
        "features": "resnet50", "feat_sample_size": 5, "layers": 24, "heads": 16, "embed": 1024, "vocab_size": 128,
        "block_size": 270}


def test_the_table_carries_the_published_numbers_and_the_inputs(tmp_path):
    import pandas as pd

    from i2a.evaluation.table import build_table
    from i2a.spec.runspec import RunSpec

    config = validate_config(copy.deepcopy(STUDY), SCHEMA)
    # resnet50-published and resnet50-5feats-published
    specs = [RunSpec.from_config(config, r) for r in config["runs"][:2]]
    scores = {"mkl": {"value": 6.5, "low": 6.3, "high": 6.7}, "fid": {"value": 27.0, "low": 25.0, "high": 29.0},
              "n_videos": 768, "samples_per_video": 10, "n_seeds": 1}
    rows = {}
    for spec in specs:
        folder = tmp_path / "runs" / spec.name / "samples"
        folder.mkdir(parents=True)
        (folder / "scores.json").write_text(json.dumps(scores))
        rows[spec.name] = f"runs/{spec.name}/samples"
    table = build_table(specs, rows, tmp_path, {}, baseline=None, probes={}, inputs="authors").set_index("run")
    assert table.loc["resnet50-published", ["published_KL", "published_FID"]].tolist() == [6.3, 25.1]
    assert table.loc["resnet50-5feats-published", ["published_KL", "published_FID"]].tolist() == [6.1, 20.9]
    assert set(table["inputs"]) == {"authors"}
    assert pd.isna(table.loc["resnet50-published", "epochs"])  # not trained here
    columns = list(table.reset_index().columns)
    assert columns.index("published_KL") == columns.index("KL_high") + 1  # beside the measured value and interval
    assert columns.index("published_FID") == columns.index("FID_high") + 1


# ---------------------------------------------------------------- what each switch reruns
@pytest.fixture(scope="module")
def touched_demo(tmp_path_factory):
    """The demo's DAG with every output present and up to date (`--touch`: nothing computed), so that a dry run
    after a config change lists exactly the jobs the change reruns."""
    workdir = copy_workflow(tmp_path_factory.mktemp("touched"))
    result = snakemake("-n", "--configfile", "config/demo.yaml", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in result.stdout.splitlines():
        if line.strip().startswith("output:"):
            for path in (workdir / p.strip() for p in line.split(":", 1)[1].split(",")):
                if "." in path.name:  # a file; the outputs without a suffix are directory() outputs
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
                else:
                    path.mkdir(parents=True, exist_ok=True)
    result = snakemake("--touch", "--forceall", "--cores", "1", "--configfile", "config/demo.yaml", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in snakemake("-n", "--configfile", "config/demo.yaml", cwd=workdir).stdout
    return workdir


def rerun_after(workdir: Path, tmp_path: Path, edit) -> list[tuple[str, str]]:
    config = yaml.safe_load((workdir / "config/demo.yaml").read_text())
    edit(config)
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake("-n", "--configfile", str(tmp_path / "changed.yaml"), cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return sorted(planned_jobs(result.stdout))


REPORT_JOBS = [("aggregate_table", ""), ("plot_training_overview", ""), ("report_results", ""),
               ("report_landing", ""), ("all", "")]


def test_training_precision_reruns_exactly_that_run(touched_demo, tmp_path):
    jobs = rerun_after(touched_demo, tmp_path, lambda c: c["runs"][2].update(precision="bf16"))
    run = "no-feats"  # the baseline: every other row's comparison with it is redone too
    assert ("train_gpt", run) in jobs and [j for j in jobs if j[0] == "train_gpt"] == [("train_gpt", run)]
    assert not {r for r, _ in jobs} & {"extract_features", "preprocess_clips", "train_codebook", "encode_tokens"}
    assert sorted(j for j in jobs if j[0] in ("sample_tokens", "vocode", "plot_loss_curve")) == [
        ("plot_loss_curve", run), ("sample_tokens", f"{run}/samples"), ("vocode", run)]


def test_sampling_precision_resamples_every_run_and_nothing_before(touched_demo, tmp_path):
    """sampling.precision is a sampling setting: every sample set is redrawn (the precision control then in fp32),
    no transformer is retrained."""
    jobs = rerun_after(touched_demo, tmp_path, lambda c: c["sampling"].update(precision="bf16"))
    assert not {r for r, _ in jobs} & {"train_gpt", "extract_features", "train_codebook", "encode_tokens"}
    assert sorted(run for r, run in jobs if r == "sample_tokens") == [
        "clip-s5/fp32", "clip-s5/samples", "clip-s5/shuffled", "no-feats/samples", "resnet18-s5/fp32",
        "resnet18-s5/samples", "resnet18-s5/shuffled"]
    assert sorted(run for r, run in jobs if r == "compare_precision") == ["clip-s5", "resnet18-s5"]


def test_feature_precision_and_storage_rerun_the_features_and_the_runs_using_them(touched_demo, tmp_path):
    for edit in (lambda c: c["features"].update(precision="bf16"), lambda c: c["features"].update(dtype="float16")):
        jobs = rerun_after(touched_demo, tmp_path, edit)
        assert sum(r == "extract_features" for r, _ in jobs) == 6  # 2 backbones x 3 shards
        assert sorted(run for r, run in jobs if r == "train_gpt") == ["clip-s5", "resnet18-s5"]  # not no-feats
        assert not {r for r, _ in jobs} & {"preprocess_clips", "train_codebook", "encode_tokens", "train_melception"}


def test_the_lr_finder_adds_its_job_and_plot_and_reruns_training_only_with_base_lr_auto(touched_demo, tmp_path):
    jobs = rerun_after(touched_demo, tmp_path, lambda c: c["runs"][0].update(lr_find=True))
    assert sorted(jobs) == sorted([("lr_find", "resnet18-s5"), ("plot_lr_find", "resnet18-s5"), ("all", "")])
    jobs = rerun_after(touched_demo, tmp_path, lambda c: c["runs"][0].update(lr_find=True, base_lr="auto"))
    assert ("lr_find", "resnet18-s5") in jobs and ("train_gpt", "resnet18-s5") in jobs
    assert [j for j in jobs if j[0] == "train_gpt"] == [("train_gpt", "resnet18-s5")]


def test_base_lr_auto_needs_the_lr_finder():
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    merged = {**copy.deepcopy(STUDY), **config}
    merged["runs"][0]["base_lr"] = "auto"
    with pytest.raises(ConfigError, match="base_lr: auto takes the LR finder's suggestion; set lr_find: true"):
        validate_config(merged, SCHEMA)


# ---------------------------------------------------------------- the released files' checksums and choices
def test_melgan_is_checked_against_the_md5_its_author_published(archive_server, tmp_path):
    """SpecVQGAN issue 27: netG.pt has MD5 e9e3ea89122d31e3dec25f585d215335; any other file is refused."""
    assert registry.released("melgan").md5 == "e9e3ea89122d31e3dec25f585d215335"
    archive_server.payload = b"not the generator"
    dest = tmp_path / "melgan.ckpt"
    from i2a.infra.download import DownloadError

    with pytest.raises(DownloadError, match="e9e3ea89122d31e3dec25f585d215335"):
        registry.fetch_released("melgan", dest, url=archive_server.url)
    assert not dest.exists()


def test_best_netg_is_selectable_and_its_md5_is_recorded_at_first_fetch(archive_server, tmp_path):
    """SpecVQGAN's own sampling loads best_netG.pt, for which no MD5 is published: the first whole download records
    one, and a file that changes afterwards is refused. netG.pt (pinned) stays the default."""
    from i2a.infra.download import DownloadError
    from i2a.spec.config import component_checkpoint

    default = validate_config(copy.deepcopy(STUDY), SCHEMA)
    assert component_checkpoint(default, "melgan") == "resources/checkpoints/melgan.ckpt"
    chosen = validate_config({**copy.deepcopy(STUDY), "vocoder": {"released": "melgan_best"}}, SCHEMA)
    assert component_checkpoint(chosen, "melgan") == "resources/checkpoints/melgan_best.ckpt"
    entry = registry.released("melgan_best")
    assert entry.md5 is None and entry.url.endswith("/vocoder/logs/vggsound/best_netG.pt")
    assert "5bc54f30eb89f82d129aa36ae3f1e90b60e73952" in entry.url  # a fixed commit, not a moving branch
    archive_server.payload = b"generator weights"
    dest, url = tmp_path / "melgan_best.ckpt", archive_server.url.replace("model.tar.gz", "best_netG.pt")
    registry.fetch_released("melgan_best", dest, url=url)
    assert dest.read_bytes() == b"generator weights"
    download = tmp_path / "downloads/best_netG.pt"
    assert Path(f"{download}.md5").read_text().split()[0] == hashlib.md5(b"generator weights").hexdigest()
    download.write_bytes(b"another generator")
    with pytest.raises(DownloadError, match="recorded"):
        registry.fetch_released("melgan_best", dest, url=url)
    with pytest.raises(ConfigError, match="vocoder.released"):
        validate_config({**copy.deepcopy(STUDY), "vocoder": {"released": "melception"}}, SCHEMA)


def codebook_archive(last: bytes, best: bytes = b"epoch 259 weights") -> bytes:
    stamp = "logs/2021-06-06T19-42-53_vas_codebook"
    return tar_bytes({f"{stamp}/checkpoints/epoch_259.ckpt": best, f"{stamp}/checkpoints/last.ckpt": last,
                      f"{stamp}/configs/2021-06-06T19-42-53-project.yaml": b"model: {}\n"}, gzip=True)


@pytest.mark.parametrize("last", [b"epoch 259 weights", b"epoch 260 weights"], ids=["same", "different"])
def test_the_codebook_fetch_records_whether_last_and_epoch_259_differ_and_takes_the_one_asked_for(
        archive_server, tmp_path, monkeypatch, last):
    archive_server.payload = codebook_archive(last)
    entry = dataclasses.replace(registry.released("vas_codebook"), md5=hashlib.md5(archive_server.payload).hexdigest())
    monkeypatch.setitem(registry.RELEASED, "vas_codebook", entry)
    default, study = tmp_path / "vas_codebook.ckpt", tmp_path / "vas_codebook.last.ckpt"
    registry.fetch_released("vas_codebook", default, url=archive_server.url)
    registry.fetch_released("vas_codebook", study, url=archive_server.url, member="last.ckpt")
    assert default.read_bytes() == b"epoch 259 weights" and study.read_bytes() == last
    for dest, member in ((default, "epoch_259.ckpt"), (study, "last.ckpt")):
        record = json.loads(dest.with_suffix(".json").read_text())
        assert record["checkpoint"] == member
        assert record["members"] == {name: {"md5": hashlib.md5(data).hexdigest(), "bytes": len(data)} for name, data
                                     in (("epoch_259.ckpt", b"epoch 259 weights"), ("last.ckpt", last))}
        assert record["identical"] is (last == b"epoch 259 weights")
    with pytest.raises(ValueError, match="no checkpoint 'best.ckpt'"):
        registry.fetch_released("vas_codebook", tmp_path / "x.ckpt", url=archive_server.url, member="best.ckpt")


def test_the_codebook_member_is_a_config_key():
    from i2a.spec.config import component_checkpoint

    config = validate_config({**copy.deepcopy(STUDY), "codebook": {"member": "last.ckpt"}}, SCHEMA)
    assert component_checkpoint(config, "codebook") == "resources/checkpoints/vas_codebook.last.ckpt"
    config = validate_config(copy.deepcopy(STUDY), SCHEMA)
    assert component_checkpoint(config, "codebook") == "resources/checkpoints/vas_codebook.ckpt"  # epoch_259.ckpt
    with pytest.raises(ConfigError, match="codebook.member.*epoch_259.ckpt, last.ckpt"):
        validate_config({**copy.deepcopy(STUDY), "codebook": {"member": "best.ckpt"}}, SCHEMA)
