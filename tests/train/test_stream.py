"""ShardStream: how ranks and workers share the data, and determinism."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from semisup_core.data.dataset import read_meta, shard_uris
from semisup_core.data.stream import ShardStream, decode_shards


def _keys(shards, **kw) -> list[str]:
    return [key for _, _, key in ShardStream(shards, **kw)]


def _batches(shards, workers: int, **kw) -> list[list[str]]:
    loader = DataLoader(ShardStream(shards, **kw), batch_size=kw["local_batch"], num_workers=workers)
    return [list(keys) for _, _, keys in loader]


def test_samples_mode_two_ranks_rebuild_the_one_rank_global_batches(blocks_dataset):
    shards = shard_uris(blocks_dataset)
    one = _batches(shards, 0, local_batch=16, steps=10, split="samples", seed=3)
    r0 = _batches(shards, 0, local_batch=8, steps=10, split="samples", seed=3, rank=0, world_size=2)
    r1 = _batches(shards, 0, local_batch=8, steps=10, split="samples", seed=3, rank=1, world_size=2)
    assert len(one) == len(r0) == len(r1) == 10
    assert [a + b for a, b in zip(r0, r1)] == one


def test_samples_mode_workers_keep_batch_order(blocks_dataset):
    shards = shard_uris(blocks_dataset)
    kw = dict(local_batch=16, steps=12, split="samples", seed=5)
    assert _batches(shards, 2, **kw) == _batches(shards, 0, **kw)


def test_shards_mode_equal_steps_disjoint_shards(blocks_dataset):
    shards = shard_uris(blocks_dataset)  # 8 shards
    kw = dict(local_batch=8, steps=5, split="shards", seed=0, world_size=2)
    b0, b1 = _batches(shards, 2, rank=0, **kw), _batches(shards, 2, rank=1, **kw)
    assert len(b0) == len(b1) == 5 and all(len(b) == 8 for b in b0 + b1)
    shard_of = lambda key: int(key.split("-")[1]) // 32  # 32 samples per shard, in order
    s0 = {shard_of(k) for b in b0 for k in b}
    s1 = {shard_of(k) for b in b1 for k in b}
    assert s0.isdisjoint(s1)


def test_shards_mode_loops_when_quota_exceeds_shards(blocks_dataset):
    shards = shard_uris(blocks_dataset)[:1]  # 32 samples, quota 5 x 16 = 80
    keys = _keys(shards, local_batch=16, steps=5, split="shards")
    assert len(keys) == 80 and len(set(keys)) == 32


def test_one_pass_without_steps_sees_every_sample_once(blocks_dataset):
    meta = read_meta(blocks_dataset)
    keys = _keys(shard_uris(blocks_dataset, meta), local_batch=7, shuffle=False, split="shards")
    assert sorted(keys) == keys and len(keys) == meta.num_samples == len(set(keys))


def test_epoch_order_depends_on_seed_and_epoch_only(blocks_dataset):
    shards = shard_uris(blocks_dataset)
    kw = dict(local_batch=8, steps=8, split="samples")

    def order(seed, epoch):
        s = ShardStream(shards, seed=seed, **kw)
        s.set_epoch(epoch)
        return [k for _, _, k in s]
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_images_and_labels_are_decoded(blocks_dataset):
    image, label, key = next(iter(ShardStream(shard_uris(blocks_dataset), local_batch=1,
                                              shuffle=False)))
    assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
    assert label == int(key.split("-")[1]) % 4


def test_a_decoded_cache_yields_the_same_samples_in_the_same_order(blocks_dataset):
    shards = shard_uris(blocks_dataset)
    cache = decode_shards(shards, 1)
    assert list(cache) == shards and sum(map(len, cache.values())) == 256
    for kw in (dict(split="samples", world_size=2, rank=1), dict(split="shards", world_size=2, rank=0),
               dict(split="shards", shuffle=False, steps=None)):
        kw = dict(dict(local_batch=8, steps=9, seed=4), **kw)
        for epoch in (0, 1):
            plain, cached = ShardStream(shards, **kw), ShardStream(shards, cache=cache, **kw)
            plain.set_epoch(epoch)
            cached.set_epoch(epoch)
            a, b = list(plain), list(cached)
            assert [k for *_, k in a] == [k for *_, k in b] and len(a) > 0
            assert all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
