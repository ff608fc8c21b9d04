"""SimCLRv2's pieces in the one training loop: its views against exact cases, LARS against
its formula, the projection head and fine-tuning from its layers, pre-training that resumes
exactly, snapshots for the probe, distillation against its formula and on tiny data, and the
stages' one-line errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from semisup_core import checkpoint, config
from semisup_core.errors import ConfigError
from semisup_core.models import create_model
from semisup_core.models.heads import ProjectionHead
from semisup_core.simclr.probe import fit_logistic, probe_snapshots
from semisup_core.simclr.stage import train_contrastive, train_distill
from semisup_core.train import train
from semisup_core.train.augment import step_generator
from semisup_core.train.config import TrainRecipe
from semisup_core.train.distill import DistillConfig, distillation_loss
from semisup_core.train.loop import InjectedFailure, build_optimizer
from semisup_core.train.schedule import scaled_lr
from semisup_core.train.views import SimCLRViews, simclr_view, two_views
from tests.train.test_train import _cfg, _weights


def _images(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g).float()


def test_simclr_views_exact_cases():
    x = _images()
    whole = dict(crop_scale_min=1.0, crop_ratio=1.0, p_jitter=0.0, p_blur=0.0)
    same = simclr_view(x, SimCLRViews(**whole, p_flip=0.0), step_generator(0, 0), 16, 0)
    assert torch.allclose(same, x, atol=1e-3)  # the whole image, unflipped, untouched
    flipped = simclr_view(x, SimCLRViews(**whole, p_flip=1.0), step_generator(0, 0), 16, 0)
    assert torch.allclose(flipped, x.flip(3), atol=1e-3)
    # brightness only (contrast factor range 0 is impossible: strength scales both, so take a
    # flat image, whose contrast is a no-op): out = clip(x * b), b in [1 - 0.8 s, 1 + 0.8 s]
    flat = torch.full((16, 1, 28, 28), 100.0)
    jit = simclr_view(flat, SimCLRViews(**{**whole, "p_jitter": 1.0}, p_flip=0.0, strength=0.5),
                      step_generator(0, 1), 16, 0)
    b = jit[:, 0, 0, 0] / 100
    assert torch.allclose(jit, b.view(16, 1, 1, 1) * 100, atol=1e-3)
    assert (b >= 0.6 - 1e-6).all() and (b <= 1.4 + 1e-6).all() and b.std() > 0.05


def test_simclr_views_crop_zooms_and_are_seeded_on_any_rank_split():
    x = _images()
    cfg = SimCLRViews()
    a = two_views(x, "simclr", None, step_generator(3, 7), 16, 0, cfg)
    b = two_views(x, "simclr", None, step_generator(3, 7), 16, 0, cfg)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    halves = two_views(x[8:], "simclr", None, step_generator(3, 7), 16, 8, cfg)
    assert all(torch.equal(u[8:], v) for u, v in zip(a, halves))
    assert not torch.equal(a[0], a[1])  # two independent draws
    for v in a:
        assert v.min() >= 0 and v.max() <= 255
    # a crop of 20-50% of the area blown up to 28x28 is smoother than the noise image
    small = SimCLRViews(crop_scale_min=0.2, p_jitter=0.0)
    zoom = simclr_view(x, small.model_copy(update={"crop_scale_min": 0.2}), step_generator(1, 1), 16, 0)
    tv = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    assert tv(zoom) < tv(x)


def test_blur_is_a_normalised_gaussian():
    x = _images(4)
    cfg = SimCLRViews(crop_scale_min=1.0, crop_ratio=1.0, p_flip=0.0, p_jitter=0.0, p_blur=1.0)
    out = simclr_view(x, cfg, step_generator(0, 0), 4, 0)
    assert torch.allclose(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), rtol=0.02)  # mass kept
    assert out.std() < x.std()


def test_lars_step_is_the_formula():
    """timm's Lars as build_optimizer sets it up: weights get eta ||w|| / (||g|| + wd ||w||)
    times (g + wd w) (first step: the momentum buffer is the update), biases and BN plain SGD."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    cfg = config.build(TrainRecipe, {"batch_size": 64, "optim": {"optimizer": "lars", "lr": 0.5, "lr_scaling": "sqrt",
                                     "weight_decay": 0.01, "trust_coeff": 0.001}})
    opt = build_optimizer(model, cfg)
    lr = 0.5 * 8  # sqrt(64)
    assert scaled_lr(cfg.optim, 64) == lr and type(opt).__name__ == "Lars"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(8, 4, generator=torch.Generator().manual_seed(0))).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    w, g = before["0.weight"], grads["0.weight"]
    trust = 0.001 * w.norm() / (g.norm() + 0.01 * w.norm() + 1e-8)
    assert torch.allclose(model[0].weight, w - lr * trust * (g + 0.01 * w), atol=1e-7)
    for name in ("0.bias", "1.weight", "1.bias"):  # no decay, no trust ratio
        p = dict(model.named_parameters())[name]
        assert torch.allclose(p, before[name] - lr * grads[name], atol=1e-7)


def test_projection_head_and_fine_tuning_from_its_layers(tmp_path):
    net = create_model("small_resnet8", 4, 1, width=4, head_mlp=2)
    head = ProjectionHead(net, 16)
    z = head(torch.randn(5, 1, 28, 28))
    assert z.shape == (5, 16) and torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)
    # the final model (what a pre-training exports) and fine-tuning from layer 1 / the encoder
    checkpoint.save_final(str(tmp_path / "pre"), net, {"model": {}})
    from semisup_core.train.loop import _init_from
    layer1 = create_model("small_resnet8", 10, 1, width=4, head_mlp=1)
    _init_from(layer1, str(tmp_path / "pre"))
    src = net.state_dict()
    for k, v in layer1.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, src[k]), k  # encoder and the head's first layer loaded
    encoder = create_model("small_resnet8", 10, 1, width=4)
    _init_from(encoder, str(tmp_path / "pre"))
    for k, v in encoder.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, src["net." + k]), k


def _simclr(out, data, **kw):
    base = dict(objective="contrastive", model_kwargs={"width": 4}, epochs=3,
                contrastive={"views": "simclr", "proj_layers": 3, "proj_dim": 16,
                             "temperature": 0.2, "koleo_weight": 0.0},
                optim={"optimizer": "lars", "lr": 0.3, "lr_scaling": "sqrt",
                       "weight_decay": 1e-4, "warmup_epochs": 0.5})
    return _cfg(out, data, **{**base, **kw})


def test_simclr_pretraining_learns_snapshots_and_resumes_exactly(tmp_path, unlabelled_blocks,
                                                                  blocks_dataset,
                                                                  blocks_test_dataset):
    straight = _simclr(tmp_path / "straight", unlabelled_blocks, snapshot_every_epochs=1)
    train_contrastive(straight)
    history = config.storage.read_json(str(tmp_path / "straight" / "metrics.json"))["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    model, state = checkpoint.load_model(str(tmp_path / "straight"))  # the encoder + 2 layers
    assert state["model"]["kwargs"] == {"width": 4, "head_mlp": 2}
    probe = probe_snapshots(str(tmp_path / "straight"), blocks_dataset, blocks_test_dataset)
    assert [p["epoch"] for p in probe] == [1, 2, 3]
    assert probe[-1]["linear_probe_top1"] > 0.5  # four textures; chance 0.25
    crashed = straight.model_copy(update={"out": str(tmp_path / "crashed"), "fail_at_step": 13})
    with pytest.raises(InjectedFailure):
        train(crashed)
    train(crashed.model_copy(update={"fail_at_step": None}))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = checkpoint.load_weights(os.path.join(checkpoint.latest(straight.out)[1], "model.safetensors"))
    cb = checkpoint.load_weights(os.path.join(checkpoint.latest(crashed.out)[1], "model.safetensors"))
    assert "out.weight" in ca and all(torch.equal(ca[k], cb[k]) for k in ca)  # the head too


def test_a_momentum_encoder_fills_the_memory(tmp_path, unlabelled_blocks):
    """``memory_momentum`` m: the memory receives the momentum encoder's descriptors of the
    batch's first views (its weights before the step), and after the step its weights are
    m θ_before + (1-m) θ_after (GroupNorm and no projection head, so that the first views
    alone give the descriptors the whole batch's forward gives)."""
    from semisup_core.train.loop import Trainer, _loader
    cfg = _simclr(tmp_path / "run", unlabelled_blocks, model_kwargs={"width": 4, "norm": "group"},
                  contrastive={"views": "simclr", "proj_layers": 0, "temperature": 0.2,
                               "koleo_weight": 0.0, "memory": 64, "memory_after_epochs": 0,
                               "memory_momentum": 0.9})
    t = Trainer(cfg)
    t.objective.start(t)
    key = t.objective.key.module
    before = [p.detach().clone() for p in t.model.parameters()]
    assert all(torch.equal(k, q) for k, q in zip(key.parameters(), before))  # starts as a copy
    images, labels, keys = next(iter(_loader(cfg, t.meta, t.dist, t.local_batch,
                                             t.steps_per_epoch, 0)))
    x = t.objective.inputs(images, step_generator(cfg.seed, 0), 0, t.memory_format)
    with torch.no_grad():
        want = t.model(x[:len(x) // 2])  # the first views by the weights before the step
    t._train_step(images, labels, keys)
    pushed = t.objective.memory.negatives()
    assert pushed.shape == (32, want.shape[1])
    assert torch.allclose(pushed, want, atol=1e-5)
    after = list(t.model.parameters())
    assert not torch.equal(after[0], before[0])
    for k, b, a in zip(key.parameters(), before, after):
        assert torch.allclose(k, 0.9 * b + 0.1 * a, atol=1e-6)
    # the second step pushes the momentum encoder's descriptors, no longer the network's
    x2 = t.objective.inputs(images, step_generator(cfg.seed, 1), 0, t.memory_format)
    with torch.no_grad():
        by_key, by_online = key(x2[:len(x2) // 2]), t.model(x2[:len(x2) // 2])
    t.step = 1
    t._train_step(images, labels, keys)
    newest = t.objective.memory.negatives()[-32:]
    assert torch.allclose(newest, by_key, atol=1e-5)
    assert (newest - by_online).abs().max() > 1e-3


def test_momentum_encoder_resumes_exactly(tmp_path, unlabelled_blocks):
    """Killed at step 13 and rerun: the same weights, memory and momentum encoder."""
    c = {"views": "simclr", "proj_layers": 3, "proj_dim": 16, "temperature": 0.2,
         "koleo_weight": 0.0, "memory": 64, "memory_after_epochs": 0.5, "memory_momentum": 0.99}
    straight = _simclr(tmp_path / "straight", unlabelled_blocks, contrastive=c)
    train_contrastive(straight)
    crashed = straight.model_copy(update={"out": str(tmp_path / "crashed"), "fail_at_step": 13})
    with pytest.raises(InjectedFailure):
        train(crashed)
    assert any(k.startswith("momentum.") for k in checkpoint.load_extra(checkpoint.latest(crashed.out)[1]))
    train(crashed.model_copy(update={"fail_at_step": None}))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "crashed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = checkpoint.load_extra(checkpoint.latest(straight.out)[1])
    eb = checkpoint.load_extra(checkpoint.latest(crashed.out)[1])
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)
    online = checkpoint.load_weights(os.path.join(checkpoint.latest(straight.out)[1],
                                                  "model.safetensors"))
    k = next(k for k, v in online.items() if v.dim() > 1)  # a weight (not a BN counter)
    assert not torch.equal(ea["momentum." + k], online[k])  # a moving average, not a copy


def test_logistic_probe_against_a_separable_case():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-2, 1, (50, 3)), rng.normal(2, 1, (50, 3))])
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    w, b, mu, sd = fit_logistic(x, y, 2)
    pred = (((torch.from_numpy(x) - mu) / sd) @ w + b).argmax(1).numpy()
    assert (pred == y).mean() > 0.95


def test_distillation_loss_is_the_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    labels = torch.tensor([-1, 2, -1, 0, -1])
    for tau, alpha in ((1.0, 0.0), (0.5, 0.7)):
        loss, _ = distillation_loss(s, t, labels, DistillConfig(teacher="x", temperature=tau,
                                                                label_weight=alpha))
        ref = 0.0
        for i in range(5):
            pt = np.exp(t[i].numpy() / tau) / np.exp(t[i].numpy() / tau).sum()
            ls = s[i].numpy() / tau - np.log(np.exp(s[i].numpy() / tau).sum())
            ref += -(pt * ls).sum() / 5
        ce = [-(s[i, labels[i]].item() - np.log(np.exp(s[i].numpy()).sum())) for i in (1, 3)]
        ref += alpha * np.mean(ce)
        assert loss.item() == pytest.approx(ref, rel=1e-5)


def test_distillation_student_learns_the_teacher(tmp_path, blocks_dataset, unlabelled_blocks,
                                                 blocks_test_dataset):
    from semisup_core.evaluate import EvaluateConfig, evaluate
    train(_cfg(tmp_path / "teacher", blocks_dataset, epochs=4))
    teacher_top1 = evaluate(EvaluateConfig(model=str(tmp_path / "teacher"),
                                           data=blocks_test_dataset, out=str(tmp_path / "te")))["top1"]
    student = _cfg(tmp_path / "student", unlabelled_blocks, objective="distill", epochs=4,
                   model_kwargs={"width": 4}, distill={"teacher": str(tmp_path / "teacher")})
    train_distill(student)
    top1 = evaluate(EvaluateConfig(model=str(tmp_path / "student"), data=blocks_test_dataset,
                                   out=str(tmp_path / "se")))["top1"]
    # no labels at all: what the student knows comes from the teacher (chance 0.25)
    assert teacher_top1 > 0.9 and top1 > 0.8, (teacher_top1, top1)


def test_one_line_errors(tmp_path, blocks_dataset, unlabelled_blocks):
    with pytest.raises(ConfigError, match="objective distill needs distill.teacher"):
        _cfg(tmp_path / "d", unlabelled_blocks, objective="distill")
    with pytest.raises(ConfigError, match="memory_momentum fills the memory: set contrastive.memory"):
        _simclr(tmp_path / "m", unlabelled_blocks, contrastive={"memory_momentum": 0.99})
    with pytest.raises(ConfigError, match="distill.teacher .*no model"):
        train(_cfg(tmp_path / "d", unlabelled_blocks, objective="distill",
                   distill={"teacher": str(tmp_path / "missing")}))
    with pytest.raises(ConfigError, match="semisup stage contrastive trains objective contrastive"):
        train_contrastive(_cfg(tmp_path / "s", blocks_dataset))
    with pytest.raises(ConfigError, match="head_mlp must be a whole number"):
        train(_cfg(tmp_path / "h", blocks_dataset, model_kwargs={"width": 4, "head_mlp": -1}))
