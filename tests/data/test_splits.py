"""The VAS split rule reproduces the authors' lists exactly."""
import pytest
from conftest import shared_path

from i2a.data.splits import VAS_VALID_PER_CLASS, assign_splits


def _lines(path):
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def test_reproduces_authors_vas_lists():
    train = _lines(shared_path("data", "vas_train.txt"))
    valid = _lines(shared_path("data", "vas_valid.txt"))
    clips = train + valid
    # order of the input must not matter
    split = assign_splits(sorted(clips, reverse=True), VAS_VALID_PER_CLASS)
    assert sorted(c for c, s in split.items() if s == "valid") == sorted(valid)
    assert sorted(c for c, s in split.items() if s == "train") == sorted(train)
    assert (len(train), len(valid)) == (11773, 768)


def test_last_k_sorted_names_per_class_with_int():
    clips = ["b/x2", "a/03", "a/01", "b/x1", "a/02", "b/x3", "a/10"]
    split = assign_splits(clips, 1)
    assert {c for c, s in split.items() if s == "valid"} == {"a/10", "b/x3"}
    assert set(split) == set(clips)


@pytest.mark.parametrize("clips,k,msg", [
    (["a/1", "a/2"], {"b": 1}, "no validation size"),
    (["a/1", "a/2"], 2, "keep some for training"),
    (["noclass"], 1, "not '<class>/<name>'"),
    (["a/1", "a/1", "a/2"], 1, "twice"),
])
def test_rejects_bad_requests(clips, k, msg):
    with pytest.raises(ValueError, match=msg):
        assign_splits(clips, k)
