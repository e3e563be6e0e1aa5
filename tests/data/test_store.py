"""Streamed .npy writing and bounded read-ahead: what keeps shard jobs' memory flat."""
import threading
import time

import numpy as np
import pytest

from i2a.data.store import NpyRowWriter
from i2a.infra.parallel import prefetched


def test_rows_written_one_by_one_load_as_one_array(tmp_path):
    rows = np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float16)
    with NpyRowWriter(tmp_path / "a.npy", (3, 4), "float16") as out:
        for row in rows:
            out.append(row)
    assert np.array_equal(np.load(tmp_path / "a.npy"), rows)
    with NpyRowWriter(tmp_path / "empty.npy", (3, 4)):
        pass
    assert np.load(tmp_path / "empty.npy").shape == (0, 3, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "empty.npy"]


def test_a_failure_midway_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="row of shape"):
        with NpyRowWriter(tmp_path / "a.npy", (3,)) as out:
            out.append(np.zeros(3))
            out.append(np.zeros(4))
    assert list(tmp_path.iterdir()) == []


def test_prefetched_keeps_order_and_bounds_the_work_in_flight():
    started, lock = [], threading.Lock()

    def slow(i):
        with lock:
            started.append(i)
        time.sleep(0.01 * (i % 3))
        return i * i

    seen = []
    for i, result in enumerate(prefetched(slow, range(20), workers=2, ahead=3)):
        assert result == i * i
        with lock:
            assert len(started) <= i + 1 + 3  # never more than `ahead` items beyond the one consumed
        seen.append(result)
    assert len(seen) == 20
    assert list(prefetched(slow, range(4), workers=0, ahead=2)) == [0, 1, 4, 9]


def test_sharded_array_reads_a_row_or_part_of_it_across_shards(tmp_path):
    from i2a.data.store import ShardedArray

    parts = [np.arange(3 * 4 * 2).reshape(3, 4, 2), 100 + np.arange(2 * 4 * 2).reshape(2, 4, 2)]
    for i, p in enumerate(parts):
        np.save(tmp_path / f"{i}.npy", p)
    whole = np.concatenate(parts)
    arr = ShardedArray([tmp_path / "0.npy", tmp_path / "1.npy"])
    frames = np.array([3, 0])
    for i in (0, 2, 3, 4, -1, -5):
        np.testing.assert_array_equal(arr[i], whole[i])
        np.testing.assert_array_equal(arr[i, frames], whole[i, frames])
        assert not isinstance(arr[i, frames], np.memmap)  # in memory, not a view of the file
    for i in (5, -6):
        with pytest.raises(IndexError):
            arr[i, frames]
