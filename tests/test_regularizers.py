"""The regularizers beyond BN, dropout and clipping: label smoothing, mixup/CutMix, EMA of the weights,
group and layer norm, adaptive gradient clipping, weight decay off norms and biases, stochastic depth,
and their presets. Each is checked against a hand computation, on real (tiny) training runs, through
resume, in the run id and compare, and in what is refused."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from regbench import checkpoints, compare, loop, mixing, runner
from regbench.ema import WeightAverage
from regbench.errors import ConfigError
from regbench.models import build_model
from regbench.optim import build_optimizer
from regbench.record import ADDED_KEYS
from regbench.regimen import Regimen, adaptive_clip_
from regbench.tasks.tagging import MODEL_INPUTS
from regbench.validation import validate

from test_resume import _metrics_of, interrupted_run

NEW_PRESETS = {"label_smoothing": {"label_smoothing": 0.1}, "mixup": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},
               "ema": {"ema_decay": 0.999}}


# -- presets and off values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["none", "bn", "dropout", "bn_dropout", "bn_dropout_gc", *NEW_PRESETS])
def test_every_preset_has_every_key_and_the_new_ones_sit_on_bn_dropout(compose_cfg, preset):
    regimen = Regimen.from_config(compose_cfg(f"regularizer={preset}"))
    expected = {"label_smoothing": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "ema_decay": 0.0,
                "stochastic_depth": 0.0, "norm_groups": 8, "decay_norm_and_bias": True}
    expected.update(NEW_PRESETS.get(preset, {}))
    assert {k: getattr(regimen, k) for k in expected} == expected
    if preset in NEW_PRESETS:  # the everyday recipe with one thing added
        assert (regimen.norm_type, regimen.dropout_p, regimen.clip_mode) == ("batch", 0.5, "none")


def test_the_study_presets_resolve_as_before(compose_cfg):
    """The five presets now start from `none` and set what they change: the values are what they were."""
    got = {p: (r.norm_type, r.norm_layers.text(), r.dropout_p, r.dropout_layers.text(), r.clip_mode, r.clip_max)
           for p in ("none", "bn", "dropout", "bn_dropout", "bn_dropout_gc")
           for r in [Regimen.from_config(compose_cfg(f"regularizer={p}"))]}
    assert got == {"none": ("none", "all", 0.0, "default", "none", 1.0),
                   "bn": ("batch", "all", 0.0, "default", "none", 1.0),
                   "dropout": ("none", "all", 0.5, "default", "none", 1.0),
                   "bn_dropout": ("batch", "all", 0.5, "default", "none", 1.0),
                   "bn_dropout_gc": ("batch", "all", 0.5, "default", "norm", 1.0)}


def test_keys_at_their_off_values_keep_the_run_id_and_any_other_value_changes_it(compose_cfg):
    cfg = compose_cfg("regularizer=bn_dropout")
    identity = checkpoints.identity(cfg)
    for key in ADDED_KEYS:  # not in the identity at all: a run id from before these keys existed still matches
        section, *rest = key.split(".")
        node = identity[section]
        for part in rest[:-1]:
            node = node.get(part, {})
        assert rest[-1] not in node, key
    base = checkpoints.run_id(cfg)
    changed = ["regularizer.label_smoothing=0.1", "regularizer.mixup.alpha=0.2", "regularizer.cutmix.alpha=1",
               "regularizer.ema.decay=0.99", "regularizer.norm.type=group", "regularizer.norm.groups=4",
               "regularizer.grad_clip.mode=agc", "optimizer.decay_norm_and_bias=false",
               "regularizer.stochastic_depth=0.1"]
    ids = {checkpoints.run_id(compose_cfg("regularizer=bn_dropout", o)) for o in changed}
    assert base not in ids and len(ids) == len(changed)


def test_compare_reads_a_record_without_the_new_keys_as_off_and_groups_by_them(tmp_path):
    """An old record (no label_smoothing key) and a new one at 0 are one group; 0.1 is another, labelled."""
    import json

    from test_compare import write_run

    def run(name, seed, accuracy, smoothing):
        write_run(tmp_path / name, "bn_dropout", seed, accuracy)
        record_file = tmp_path / name / "metrics.json"
        record = json.loads(record_file.read_text())
        regularizer = {"name": "bn_dropout", **({"label_smoothing": smoothing} if smoothing is not None else {})}
        record.update(config={"task": {"name": "cifar10"}, "regularizer": regularizer}, run_id=name)
        record_file.write_text(json.dumps(record))

    run("old", 0, 0.80, None)
    run("new", 1, 0.82, 0.0)
    run("smooth0", 0, 0.85, 0.1)
    run("smooth1", 1, 0.87, 0.1)
    result = compare.compare([tmp_path], baseline="regularizer.label_smoothing=0")
    assert result.keys == ["task", "regularizer.label_smoothing"]
    summary = result.summary.set_index("regularizer.label_smoothing")
    assert summary.loc["0", "n"] == 2 and summary.loc["0.1", "n"] == 2
    assert summary.loc["0.1", "mean"] == pytest.approx(0.86)


# -- label smoothing -----------------------------------------------------------------------------------------
def smoothed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, e: float) -> torch.Tensor:
    """By hand: the target puts 1 - e + e / K on the label and e / K on every class."""
    logp = logits.log_softmax(1)
    k = logits.shape[1]
    target = torch.full_like(logp, e / k).scatter(1, y[:, None], 1 - e + e / k)
    return -(target * logp).sum(1).mean()


def test_label_smoothing_is_the_hand_computed_loss_in_training_and_off_in_evaluation(small_cfg):
    cfg = small_cfg("cifar10", "regularizer=label_smoothing")
    task, regimen, model, generator = loop.build(cfg, torch.device("cpu"))
    x, y = next(iter(task.train_batches(generator)))
    model.eval()  # no dropout, so the two forward passes agree
    loss, _ = task.training_step(model, (x, y))
    with torch.no_grad():
        logits = model(x)
    assert loss.item() == pytest.approx(smoothed_cross_entropy(logits, y, 0.1).item(), rel=1e-5)
    assert loss.item() != pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-3)
    plain_task = loop.build(small_cfg("cifar10", "regularizer=bn_dropout"), torch.device("cpu"))[0]
    assert loop.evaluate(task, model, "val") == loop.evaluate(plain_task, model, "val")  # val loss: plain NLL


def test_the_tagger_smooths_its_softmax_targets_and_refuses_to_with_a_crf(small_cfg):
    with pytest.raises(ConfigError, match="needs the tagger's softmax output.*model.crf=false"):
        small_cfg("conll", "regularizer.label_smoothing=0.1")
    cfg = small_cfg("conll", "regularizer.label_smoothing=0.2", "model.crf=false")
    task, regimen, model, generator = loop.build(cfg, torch.device("cpu"))
    batch = next(iter(task.train_batches(generator)))
    model.eval()  # no dropout, so the two forward passes agree
    loss, _ = task.training_step(model, batch)
    with torch.no_grad():
        emissions = model(*(batch[k] for k in MODEL_INPUTS))
    mask = batch["mask"]
    assert loss.item() == pytest.approx(smoothed_cross_entropy(emissions[mask], batch["tags"][mask], 0.2).item(),
                                        rel=1e-5)


# -- mixup and CutMix ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0, 4.0, 8.0, 16.0])
def test_the_beta_sampler_draws_beta_alpha_alpha(alpha):
    """Exact for every alpha: until 2026-12-05 a draw fell back to 0.5 after 256 rejected pairs, which
    happened to 2.6% of draws at alpha 4 and 98% at alpha 8."""
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([mixing.sample_beta(alpha, generator) for _ in range(4000)]).numpy().astype(np.float64)
    assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    assert np.all((draws >= 0) & (draws <= 1))
    assert np.mean(draws == 0.5) < 0.01
    assert draws.var() == pytest.approx(stats.beta(alpha, alpha).var(), rel=0.15)


def test_the_beta_sampler_draws_from_the_runs_generator_only():
    """The same generator state gives the same draws (a resumed run mixes as an uninterrupted one), and
    the global generator is neither read nor advanced."""
    for alpha in (0.2, 4.0):
        torch.manual_seed(123)
        before = torch.get_rng_state()
        first = [mixing.sample_beta(alpha, torch.Generator().manual_seed(7)) for _ in range(3)]
        again = [mixing.sample_beta(alpha, torch.Generator().manual_seed(7)) for _ in range(3)]
        assert torch.equal(torch.stack(first), torch.stack(again))
        assert torch.equal(torch.get_rng_state(), before)


def test_mixup_and_cutmix_mix_what_they_say():
    x = torch.arange(4 * 1 * 10 * 10, dtype=torch.float32).view(4, 1, 10, 10)
    lam = torch.tensor(0.3)
    assert torch.equal(mixing.mixup(x, lam), 0.3 * x + 0.7 * x.flip(0))
    generator = torch.Generator().manual_seed(1)
    mixed, kept = mixing.cutmix(x, torch.tensor(0.64), generator)
    pasted = mixed != x
    assert pasted.float().mean().item() == pytest.approx(1 - kept.item())  # the label weight is the area kept
    assert torch.equal(mixed[pasted], x.flip(0)[pasted])
    rows, cols = pasted[0, 0].any(1).nonzero().squeeze(1), pasted[0, 0].any(0).nonzero().squeeze(1)
    assert pasted[0, 0].sum() == len(rows) * len(cols)  # one rectangle
    assert kept.item() < 1


def test_a_mixed_batch_weighs_both_labels_and_draws_from_the_run_generator(small_cfg):
    cfg = small_cfg("cifar10", "regularizer=mixup")
    task, regimen, model, generator = loop.build(cfg, torch.device("cpu"))
    hooks = loop.prepare(cfg, task, model, regimen, generator).hooks  # mixing is the run's batch hook

    def first_batch():
        return hooks.transform_batch(next(iter(task.train_batches(generator))), generator)

    state = generator.get_state()
    x, y, partner, lam = first_batch()
    generator.set_state(state)
    x2, _, _, lam2 = first_batch()
    assert torch.equal(partner, y.flip(0))  # each image's partner is its mirror in the batch
    assert torch.equal(x, x2) and torch.equal(lam, lam2)  # nothing else drew: resume replays it exactly
    assert lam.shape == y.shape and (lam == lam[0]).all() and 0 <= lam[0] <= 1
    model.eval()
    loss, stats_ = task.training_step(model, (x, y, partner, lam))
    with torch.no_grad():
        logits = model(x)
    l = lam[0].item()
    by_hand = l * F.cross_entropy(logits, y) + (1 - l) * F.cross_entropy(logits, y.flip(0))
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    predicted = logits.argmax(1)
    assert stats_["correct"].item() == pytest.approx(
        (l * (predicted == y).float() + (1 - l) * (predicted == y.flip(0)).float()).sum().item(), rel=1e-6)


# -- EMA -----------------------------------------------------------------------------------------------------
def test_the_weight_average_follows_the_hand_formula_for_weights_and_bn_statistics():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = WeightAverage(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 3))  # moves the running statistics
        average.update()
        for k, v in model.state_dict().items():
            expected[k] = expected[k] + 0.1 * (v - expected[k]) if v.is_floating_point() else v.clone()
    for k, v in average.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for p in average.module.parameters())


def test_validation_test_and_best_weights_are_the_ema_and_resume_is_exact(small_cfg, tmp_path):
    cfg = small_cfg("cifar10", "regularizer=ema", "regularizer.ema.decay=0.5", "regularizer.mixup.alpha=0.4",
                    "regularizer.cutmix.alpha=1", "trainer.max_epochs=3", "trainer.resume=true")
    reference = runner.run(cfg, tmp_path / "reference")
    best = torch.load(tmp_path / "reference" / "checkpoints" / "best.pt", weights_only=True)
    task, regimen, model, _ = loop.build(cfg, torch.device("cpu"))
    model.load_state_dict(best["model"])
    assert loop.evaluate(task, model, "test") == reference["test"]

    plain = runner.run(small_cfg("cifar10", "regularizer=bn_dropout", "trainer.max_epochs=3"), tmp_path / "plain")
    assert plain["val"] != reference["val"]

    cfg_elsewhere = small_cfg("cifar10", "regularizer=ema", "regularizer.ema.decay=0.5", "regularizer.mixup.alpha=0.4",
                              "regularizer.cutmix.alpha=1", "trainer.max_epochs=3", "trainer.resume=true",
                              f"paths.output_dir={tmp_path / 'other-outputs'}")
    interrupted_run(cfg_elsewhere, tmp_path / "first", after=1)
    last = torch.load(tmp_path / "first" / "checkpoints" / "last.pt", weights_only=True)
    assert last["ema"] is not None and set(last["ema"]) == set(last["model"])
    resumed = runner.run(cfg_elsewhere, tmp_path / "second")
    assert "after epoch 1" in resumed["resumed_from"]
    for split in ("train", "val", "test"):
        assert resumed[split] == reference[split]
    pd.testing.assert_frame_equal(_metrics_of(pd.read_csv(tmp_path / "second" / "history.csv")),
                                  _metrics_of(pd.read_csv(tmp_path / "reference" / "history.csv")))


# -- norms ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,model,layers", [("cifar10", "cnn13", 9), ("conll", "bilstm", 2),
                                               ("movielens", "two_tower", None)])
@pytest.mark.parametrize("kind", ["group", "layer"])
def test_group_and_layer_norm_go_where_batch_norm_went_and_train(small_cfg, task, model, layers, kind, tmp_path):
    extra = ["model.width=0.125"] if model == "cnn13" else []
    bn_cfg = small_cfg(task, f"model={model}", "regularizer=bn", *extra, "regularizer.norm.groups=2")
    cfg = small_cfg(task, f"model={model}", "regularizer=bn", f"regularizer.norm.type={kind}", *extra,
                    "regularizer.norm.groups=2")
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in loop.build(bn_cfg, torch.device("cpu"))[2].modules())
    task_, regimen, built, generator = loop.build(cfg, torch.device("cpu"))
    norms = [m for m in built.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == n_bn > 0 and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in built.modules())
    assert {m.num_groups for m in norms} == {2 if kind == "group" else 1}
    t = loop.prepare(cfg, task_, built, regimen, generator)
    result = loop.train_epoch(t, 1)
    assert math.isfinite(result.metrics["loss"])


def test_a_group_count_that_does_not_divide_the_channels_is_one_line(small_cfg):
    cfg = small_cfg("cifar10", "regularizer=bn", "regularizer.norm.type=group", "regularizer.norm.groups=7")
    with pytest.raises(ConfigError, match=r"regularizer.norm.groups=7 does not divide the \d+ channels of layer 1: "
                                          r"choose a divisor of \d+ \(e.g. \d+\)"):
        loop.build(cfg, torch.device("cpu"))


# -- AGC, weight decay, stochastic depth ---------------------------------------------------------------------
def test_adaptive_clipping_matches_the_paper_unit_by_unit():
    torch.manual_seed(0)
    weight = torch.randn(5, 3, 2, 2, requires_grad=True)
    bias = torch.zeros(5, requires_grad=True)  # norm 0: counts as 1e-3
    weight.grad, bias.grad = torch.randn(5, 3, 2, 2) * 3, torch.randn(5)
    expected = []
    for p in (weight, bias):
        g = p.grad.clone()
        units = [(g[i], p.detach()[i]) for i in range(len(g))] if p.ndim > 1 else [(g, p.detach())]
        clipped = []
        for gu, wu in units:
            limit = 0.1 * max(wu.norm().item(), 1e-3)
            clipped.append(gu * limit / gu.norm() if gu.norm() > limit else gu)
        expected.append(torch.stack(clipped) if p.ndim > 1 else clipped[0])
    fired = adaptive_clip_([weight, bias], 0.1)
    torch.testing.assert_close(weight.grad, expected[0])
    torch.testing.assert_close(bias.grad, expected[1])
    assert fired.item()
    assert not adaptive_clip_([weight, bias], 1e6).item()


@pytest.mark.parametrize("decoupled", [False, True])
def test_decay_norm_and_bias_false_leaves_norms_and_biases_undecayed(compose_cfg, decoupled):
    def step(flag: str):
        cfg = compose_cfg("regularizer=bn", "optimizer=sgd", "optimizer.weight_decay=0.1",
                          f"optimizer.decoupled_weight_decay={str(decoupled).lower()}",
                          f"optimizer.decay_norm_and_bias={flag}")
        regimen = Regimen.from_config(cfg)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        with torch.no_grad():  # no zeros: each parameter's ratio after/before is its decay
            for p in model.parameters():
                p.fill_(2.0)
        optimizer, hook = build_optimizer(cfg, model, regimen)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        (0 * sum(p.sum() for p in model.parameters())).backward()  # zero gradients: only the decay moves them
        if hook is not None:
            hook.apply()
        optimizer.step()
        return {n: (p.detach() / before[n]).mean().item() for n, p in model.named_parameters()}

    shrink = 1 - cfg_lr() * 0.1
    everything = step("true")
    assert everything == pytest.approx({n: shrink for n in everything})
    exempt = step("false")
    assert exempt["0.weight"] == pytest.approx(shrink)
    assert exempt["0.bias"] == exempt["1.weight"] == exempt["1.bias"] == 1.0


def cfg_lr() -> float:
    from omegaconf import OmegaConf
    from pathlib import Path
    return float(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "optimizer" / "sgd.yaml").lr)


def test_stochastic_depth_rises_linearly_over_resnet18s_blocks_and_is_refused_without_residual_blocks(compose_cfg):
    from torchvision.ops import StochasticDepth

    cfg = compose_cfg("model=resnet18", "regularizer.stochastic_depth=0.14")
    regimen = Regimen.from_config(cfg)
    model = build_model(cfg, regimen, num_classes=10, in_channels=3, image_size=32)
    regimen.check_placed()
    rates = [b.drop_path.p if isinstance(b.drop_path, StochasticDepth) else 0.0 for b in model.blocks]
    assert rates == pytest.approx([0.14 * i / 7 for i in range(8)])
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model(x))  # off in evaluation

    for kind, groups in (("layer", 1), ("group", 8)):  # and the norms go where BN went, shortcuts included
        normed = build_model(compose_cfg("model=resnet18", f"regularizer.norm.type={kind}", "regularizer=bn"),
                             Regimen.from_config(compose_cfg("model=resnet18", "regularizer=bn",
                                                             f"regularizer.norm.type={kind}")),
                             num_classes=10, in_channels=3, image_size=32)
        norms = [m for m in normed.modules() if isinstance(m, nn.GroupNorm)]
        assert len(norms) == 17 + 3 and {m.num_groups for m in norms} == {groups}

    with pytest.raises(ConfigError, match="model=cnn13 has none: use model=resnet18"):
        validate(compose_cfg("regularizer.stochastic_depth=0.1"), machine=False)
    plain = Regimen.from_config(compose_cfg("regularizer.stochastic_depth=0.1"))
    plain.place(3)  # a model of one's own that never asks for a drop path
    with pytest.raises(ConfigError, match="never asked placement.drop_path"):
        plain.check_placed()


@pytest.mark.parametrize("args,message", [
    (["regularizer.mixup.alpha=-0.5"], "regularizer.mixup.alpha=-0.5 is invalid: it must be >= 0"),
    (["regularizer.label_smoothing=1"], "regularizer.label_smoothing=1 is invalid: it must be in [0, 1)"),
    (["regularizer.stochastic_depth=0.1"], "model=cnn13 has none"),
    (["task=movielens", "regularizer=mixup"], "regularizer.mixup.alpha=0.2 does not apply to task=movielens"),
    (["task=conll2003", "regularizer.cutmix.alpha=1"], "regularizer.cutmix.alpha=1 does not apply to task=conll2003"),
    (["regularizer.norm.type=instance"], "regularizer.norm.type='instance' is not allowed: choose one of none, "
                                         "batch, group, layer"),
    (["regularizer.ema.decay=1"], "regularizer.ema.decay=1 is invalid: it must be in [0, 1)"),
])
def test_bad_values_are_refused_before_anything_starts(compose_cfg, args, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*args), machine=False)
    assert message in str(err.value)
