"""KeyRows: a key's row in the shards' order, against a dict built from the keys (brute force)."""

from __future__ import annotations

import numpy as np
import pytest

from semisup_core.data import keyrows
from semisup_core.data.dataset import shard_uris
from semisup_core.data.keyrows import KeyRows
from semisup_core.data.shards import iter_shard
from semisup_core.errors import ConfigError

from tests.data.conftest import make_dataset


def _shards(tmp_path, name, n, prefix, per_shard=7):
    uri = str(tmp_path / name)
    return shard_uris(uri, make_dataset(uri, n, ["a", "b"], prefix=prefix, per_shard=per_shard))


def _brute(shards):
    keys = [s.key for uri in shards for s in iter_shard(uri)]
    return keys, {k: i for i, k in enumerate(keys)}


@pytest.mark.parametrize("weak_hash", [False, True])
def test_rows_equal_a_dict_of_the_keys(tmp_path, monkeypatch, weak_hash):
    """Every key's row, in any order, equals its position in the shards; with a hash that
    collides (the low 3 bits only) the colliding keys go to the exact table and lookups stay
    exact."""
    shards = _shards(tmp_path, "a", 40, "x") + _shards(tmp_path, "b", 23, "y", per_shard=5)
    if weak_hash:
        real = keyrows.hash_keys
        monkeypatch.setattr(keyrows, "hash_keys", lambda keys: real(keys) % np.uint64(8))
    index = KeyRows(shards)
    keys, want = _brute(shards)
    assert len(index) == len(keys) == 63
    assert bool(index.exact) == weak_hash
    rng = np.random.default_rng(0)
    probe = [keys[i] for i in rng.permutation(len(keys))]
    assert index.lookup(probe).tolist() == [want[k] for k in probe]
    assert index.rows_of(probe[:5]).tolist() == [want[k] for k in probe[:5]]
    assert [k for part in index.keys() for k in part] == keys
    rows = rng.permutation(len(keys))[:9]
    assert index.key_of(rows) == [keys[r] for r in rows]


def test_the_decoded_cache_gives_the_same_rows(tmp_path):
    from semisup_core.data.stream import decode_shards
    shards = _shards(tmp_path, "a", 30, "x")
    cache = decode_shards(shards, channels=1)
    keys, want = _brute(shards)
    assert KeyRows(shards, cache).lookup(keys).tolist() == list(range(30))


def test_a_key_twice_and_an_unknown_key_are_one_line_errors(tmp_path):
    shards = _shards(tmp_path, "a", 10, "x")
    with pytest.raises(ConfigError, match="sample key 'x-00000' occurs twice in the training data"):
        KeyRows(shards + _shards(tmp_path, "b", 4, "x"))
    with pytest.raises(ConfigError, match="sample key 'nope' is not in the training data"):
        KeyRows(shards).lookup(["x-00001", "nope"])
    with pytest.raises(ConfigError, match="is not in the training data"):
        KeyRows([]).lookup(["x-00001"])


def test_the_hash_is_the_same_in_another_process():
    import subprocess
    import sys
    got = subprocess.run([sys.executable, "-c", "from semisup_core.data.keyrows import hash_keys;"
                          "print(hash_keys(['a', 'b/c']).tolist())"], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert got == str(keyrows.hash_keys(["a", "b/c"]).tolist())
