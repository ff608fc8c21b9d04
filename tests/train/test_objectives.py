"""The contrastive objective and its views: the loss against a brute force of its formula, the
views' edits against numpy, and the loop with it (learns, resumes exactly, 2 ranks == 1)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from semisup_core import checkpoint, config
from semisup_core.errors import ConfigError
from semisup_core.models import create_model
from semisup_core.train import train
from semisup_core.train.augment import step_generator
from semisup_core.train.loop import InjectedFailure
from semisup_core.train.objectives import (ContrastiveConfig, NegativeMemory, contrastive_loss,
                                           freeze_unreached, info_nce_koleo)
from semisup_core.train.views import CopyViews, copy_view, two_views
from tests.train.test_train import _cfg, _max_rel_diff, _torchrun, _weights


def _unit(n, d, seed):
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return torch.nn.functional.normalize(z, dim=1)


def _brute(z: np.ndarray, ids: np.ndarray, t: float, lam: float, align: float = 0.0,
           rows: int | None = None) -> float:
    """The loss written out pair by pair (objectives.py docstring); only the first ``rows``
    vectors are anchors (the rest are columns only, like a memory's)."""
    terms, koleo, dist2 = [], [], []
    for i in range(len(z) if rows is None else rows):
        negs = [j for j in range(len(z)) if ids[j] != ids[i]]
        denom = sum(math.exp(z[i] @ z[k] / t) for k in negs)
        for j in range(len(z)):
            if j != i and ids[j] == ids[i]:
                e = math.exp(z[i] @ z[j] / t)
                terms.append(-math.log(e / (e + denom)))
                dist2.append(float(np.sum((z[i] - z[j]) ** 2)))
        nearest = max(z[i] @ z[k] for k in negs)
        koleo.append(-math.log(math.sqrt(2 - 2 * nearest)))
    return float(np.mean(terms) + lam * np.mean(koleo) + align * np.mean(dist2))


@pytest.mark.parametrize("lam", [0.0, 3.0])
def test_info_nce_koleo_equals_the_formula_pair_by_pair(lam):
    z = _unit(12, 5, 0)  # 6 images x 2 views, views 1 then views 2
    ids = torch.arange(6).repeat(2)
    loss, stats = info_nce_koleo(z, ids, torch.arange(12), z, ids, 0.2, lam)
    assert loss.item() == pytest.approx(_brute(z.numpy(), ids.numpy(), 0.2, lam), rel=1e-9)
    # three views of one image: every other view of it is a positive, none a negative
    ids3 = torch.tensor([0, 0, 0, 1, 2, 3, 1, 2, 3, 4, 4, 5])
    loss3, _ = info_nce_koleo(z, ids3, torch.arange(12), z, ids3, 0.2, lam)
    assert loss3.item() == pytest.approx(_brute(z.numpy(), ids3.numpy(), 0.2, lam), rel=1e-9)
    assert -1 <= stats["nearest_neg_sim"] <= stats["pos_sim"] + 2


def test_contrastive_loss_of_one_rank_is_the_whole_batch():
    z = _unit(8, 4, 1)
    cfg = ContrastiveConfig(temperature=0.1, koleo_weight=1.0, align_weight=2.0)
    loss, _ = contrastive_loss(z, cfg, rank=0)
    ids = torch.arange(4).repeat(2)
    assert loss.item() == pytest.approx(_brute(z.numpy(), ids.numpy(), 0.1, 1.0, 2.0), rel=1e-9)


def test_memory_is_a_fifo_and_its_descriptors_are_negatives():
    mem, kept = NegativeMemory(5, 4, torch.device("cpu")), []
    for step in range(4):  # batches of 2 first views: the memory keeps the newest 5
        z = _unit(4, 4, 10 + step).float()
        cfg = ContrastiveConfig(temperature=0.1, koleo_weight=0.5)
        before = mem.negatives().clone()
        loss, _ = contrastive_loss(z, cfg, 0, mem, use_memory=True)
        # brute force: the memory's rows are extra columns that match nothing
        ids = np.concatenate([np.arange(2).repeat(1).tolist() * 2, -1 - np.arange(len(before))])
        allz = np.concatenate([z.double().numpy(), before.double().numpy()])
        want = _brute(allz, ids, 0.1, 0.5, rows=4)
        assert loss.item() == pytest.approx(want, rel=1e-5)
        kept = (kept + list(z[:2]))[-5:]
        assert torch.equal(mem.negatives(), torch.stack(kept))
    state = mem.state()
    again = NegativeMemory(5, 4, torch.device("cpu"))
    again.load(state)
    assert torch.equal(again.negatives(), mem.negatives())


def _images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g).float()


def test_views_are_seeded_per_step_and_the_same_on_any_rank_split():
    x = _images()
    cfg = CopyViews()
    a = two_views(x, "copy", cfg, step_generator(3, 7), 16, 0)
    b = two_views(x, "copy", cfg, step_generator(3, 7), 16, 0)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    # rank 1 of 2 holds images 8..15: its views are the global batch's views of them
    halves = two_views(x[8:], "copy", cfg, step_generator(3, 7), 16, 8)
    assert all(torch.equal(u[8:], v) for u, v in zip(a, halves))
    other = two_views(x, "copy", cfg, step_generator(3, 8), 16, 0)
    assert not torch.equal(a[1], other[1])
    for v in a:  # saved-image values: whole grey levels in [0, 255]
        assert torch.equal(v, v.round()) and v.min() >= 0 and v.max() <= 255


def _only(**kw) -> CopyViews:
    off = dict(p_clean=0, p_crop=0, p_translate=0, p_resize=0, p_photometric=0, p_noise=0)
    return CopyViews(**{**off, **kw})


def test_translate_moves_the_content_by_whole_pixels_with_a_black_border():
    x = _images(8)
    out = copy_view(x, _only(p_translate=1.0), step_generator(0, 0), 8, 0)
    for img, src in zip(out[:, 0].numpy(), x[:, 0].numpy()):
        found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
                 if np.array_equal(img, _shift(src, dy, dx))]
        assert len(found) == 1 and found[0] != (0, 0), found


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    h, w = a.shape
    out = np.zeros_like(a)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_crop_photometric_and_the_clean_view():
    x = _images(8)
    assert torch.equal(copy_view(x, _only(p_crop=1.0, crop_max=0.0), step_generator(0, 0), 8, 0), x)
    photo = copy_view(x, _only(p_photometric=1.0, contrast=0.0, brightness=0.0),
                      step_generator(0, 0), 8, 0)
    assert torch.equal(photo, x)
    flat = torch.full((4, 1, 28, 28), 100.0)
    shifted = copy_view(flat, _only(p_photometric=1.0, contrast=0.0), step_generator(0, 1), 4, 0)
    assert (shifted.amax((1, 2, 3)) == shifted.amin((1, 2, 3))).all()  # one offset per image
    assert shifted.sub(100).abs().max() <= 40
    crop = copy_view(flat, _only(p_crop=1.0), step_generator(0, 2), 4, 0)
    assert torch.equal(crop, flat)  # a crop of a flat image, stretched back, is the same image
    assert torch.equal(copy_view(x, CopyViews(), step_generator(0, 0), 8, 0, clean_p=1.0), x)


def test_freeze_unreached_freezes_the_classifier_only():
    model = create_model("small_resnet8", 10, 1, width=4, pool="gem", embed_dim=16)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    frozen = freeze_unreached(model, torch.ones(2, 1, 28, 28))
    assert sorted(frozen) == ["fc.bias", "fc.weight"]
    # the dry run left BatchNorm's statistics alone (and the model in training mode)
    assert model.training and all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    assert model.forward_features(torch.zeros(3, 1, 28, 28)).shape == (3, 16)


def _contrastive(out, data, **kw):
    base = dict(objective="contrastive", model_kwargs={"width": 4, "pool": "gem", "embed_dim": 16},
                contrastive={"temperature": 0.1, "koleo_weight": 1.0}, epochs=2,
                optim={"lr": 0.2, "warmup_epochs": 0.5})
    return _cfg(out, data, **{**base, **kw})


def test_contrastive_training_learns(tmp_path, unlabelled_blocks):
    train(_contrastive(tmp_path / "run", unlabelled_blocks, epochs=3))
    history = config.storage.read_json(str(tmp_path / "run" / "metrics.json"))["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["nearest_neg_sim"] < history[0]["nearest_neg_sim"]  # spread apart
    model, _ = checkpoint.load_model(str(tmp_path / "run"))  # what `embed` loads
    assert model.feature_dim == 16


def test_contrastive_training_resumes_exactly_with_its_memory(tmp_path, unlabelled_blocks):
    """A memory of negatives that starts at step 4: the crash at 13 resumes from the
    checkpoint of step 12, memory included."""
    straight = _contrastive(tmp_path / "straight", unlabelled_blocks, epochs=3,
                            contrastive={"temperature": 0.1, "koleo_weight": 1.0, "memory": 64,
                                         "memory_after_epochs": 0.5})
    train(straight)
    crashed = straight.model_copy(update={"out": str(tmp_path / "crashed"), "fail_at_step": 13})
    with pytest.raises(InjectedFailure):
        train(crashed)
    assert "memory.queue" in checkpoint.load_extra(checkpoint.latest(crashed.out)[1])
    train(crashed.model_copy(update={"fail_at_step": None}))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # without the memory in the checkpoint the resumed run would differ: the test can fail
    lost = straight.model_copy(update={"out": str(tmp_path / "lost"), "fail_at_step": 13})
    with pytest.raises(InjectedFailure):
        train(lost)
    ckpt = checkpoint.latest(lost.out)[1]
    os.remove(os.path.join(ckpt, "extra.safetensors"))
    train(lost.model_copy(update={"fail_at_step": None}))
    c = _weights(tmp_path / "lost")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_supervised_objective_refuses_an_unlabelled_set(tmp_path, unlabelled_blocks):
    with pytest.raises(ConfigError, match="unlabelled; the supervised objective needs labels"):
        train(_cfg(tmp_path / "sup", unlabelled_blocks))
    with pytest.raises(ConfigError, match="pool must be 'avg' or 'gem'"):
        train(_contrastive(tmp_path / "bad", unlabelled_blocks,
                           model_kwargs={"width": 4, "pool": "max"}))


def test_contrastive_two_processes_match_one(tmp_path, unlabelled_blocks):
    """Negatives gathered across ranks with their gradients: 2 ranks x 16 == 1 rank x 32.
    InfoNCE only: KoLeo's nearest negative is an argmax among near-ties while the descriptors
    start collapsed (similarities ~0.98), so float noise picks another pair (1% apart after 8
    steps here); its formula is checked pair by pair above."""
    cfg = _contrastive(tmp_path / "ddp", unlabelled_blocks, epochs=1,
                       contrastive={"temperature": 0.1, "koleo_weight": 0.0},
                       model_kwargs={"width": 4, "pool": "gem", "embed_dim": 16, "norm": "group"},
                       checkpoint={"every_steps": 100})
    proc = _torchrun(2, cfg, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(cfg.model_copy(update={"out": str(tmp_path / "single")}))
    assert _max_rel_diff(_weights(tmp_path / "ddp"), _weights(tmp_path / "single")) < 1e-4
