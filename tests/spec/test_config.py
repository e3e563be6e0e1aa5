"""The config contract's defaults: one place per setting, the typed description (design.md §1)."""
import dataclasses

import yaml

from conftest import REPO
from i2a.spec.config import SCHEMA, load_config, load_schema
from i2a.spec.runspec import GPTConfig, RunSpec, SamplingSettings, TrainSettings


def _described(cls, properties):
    return [f for f in dataclasses.fields(cls) if f.name in properties and f.default not in (dataclasses.MISSING, None)]


def test_every_run_and_sampling_default_is_the_dataclasses_and_written_once():
    written = yaml.safe_load((REPO / SCHEMA).read_text())
    loaded = load_schema(REPO / SCHEMA)
    for section, classes in ((("$defs", "run"), (RunSpec, GPTConfig, TrainSettings)),
                             (("properties", "sampling"), (SamplingSettings,))):
        raw = written[section[0]][section[1]]["properties"]
        filled = loaded[section[0]][section[1]]["properties"]
        fields = [f for cls in classes for f in _described(cls, raw)]
        assert fields, section
        for f in fields:
            assert "default" not in raw[f.name], f"{section[1]}.{f.name}: its default is the dataclass's"
            assert filled[f.name]["default"] == f.default, f.name
    assert {f.name for f in _described(SamplingSettings, raw)} >= {"top_k", "temperature", "samples_per_video"}


def test_a_run_that_says_nothing_gets_the_dataclasses_defaults(tmp_path):
    study = yaml.safe_load((REPO / "config/config.yaml").read_text())
    del study["sampling"]  # the study's config writes the defaults out; here nothing says them
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(study))
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump({"runs": [{"name": "bare", "features": "resnet18"}]}))
    loaded = load_config(tmp_path / "bare.yaml")
    spec = RunSpec.from_config(loaded, loaded["runs"][0])
    assert spec.train == TrainSettings() and spec.sampling == SamplingSettings()
    assert (spec.model.layers, spec.model.heads, spec.model.embed, spec.model.dropout) == (24, 16, 1024, 0.0)
    assert (spec.feat_sample_size, spec.feature_norm, spec.source) == (212, "raw", "train")
