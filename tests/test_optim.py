"""Optimizers, schedules, weight decay, L1 and gradient clipping, each checked on real steps."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from regbench.optim import build_optimizer, build_scheduler, lr_factor
from regbench.regimen import Regimen

OPTIMIZERS = ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"]


def quadratic_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def loss_of(model: nn.Module) -> torch.Tensor:
    x = torch.linspace(-1, 1, 32).reshape(8, 4)
    return ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_takes_steps_that_lower_the_loss(compose_cfg, name):
    cfg = compose_cfg(f"optimizer={name}", "optimizer.lr=0.01")
    model = quadratic_model()
    optimizer, decoupled = build_optimizer(cfg, model, Regimen.from_config(cfg))
    before = loss_of(model).item()
    for _ in range(20):
        optimizer.zero_grad()
        loss_of(model).backward()
        if decoupled:
            decoupled.apply()
        optimizer.step()
    assert loss_of(model).item() < before


def test_nesterov_and_momentum_are_configured(compose_cfg):
    opt, _ = build_optimizer(compose_cfg("optimizer=nesterov"), quadratic_model(), Regimen.from_config(compose_cfg("optimizer=nesterov")))
    assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.9
    opt, _ = build_optimizer(compose_cfg("optimizer=momentum"), quadratic_model(), Regimen.from_config(compose_cfg("optimizer=momentum")))
    assert opt.param_groups[0]["nesterov"] is False and opt.param_groups[0]["momentum"] == 0.9


def test_decoupled_weight_decay_shrinks_weights_by_lr_times_wd(compose_cfg):
    cfg = compose_cfg("optimizer=sgd", "optimizer.lr=0.1", "optimizer.weight_decay=0.5",
                      "optimizer.decoupled_weight_decay=true")
    model = quadratic_model()
    optimizer, decoupled = build_optimizer(cfg, model, Regimen.from_config(cfg))
    assert decoupled is not None and optimizer.param_groups[0]["weight_decay"] == 0.0
    w0 = model[0].weight.detach().clone()
    optimizer.zero_grad()
    loss_of(model).backward()
    grad = model[0].weight.grad.clone()
    decoupled.apply()
    optimizer.step()
    assert torch.allclose(model[0].weight, w0 * (1 - 0.1 * 0.5) - 0.1 * grad, atol=1e-6)


def test_coupled_weight_decay_goes_to_the_optimizer(compose_cfg):
    opt, hook = build_optimizer(compose_cfg("optimizer=adam", "optimizer.weight_decay=0.01"), quadratic_model(), Regimen.from_config(compose_cfg("optimizer=adam", "optimizer.weight_decay=0.01")))
    assert hook is None and isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["weight_decay"] == 0.01
    opt, hook = build_optimizer(compose_cfg("optimizer=adamw"), quadratic_model(), Regimen.from_config(compose_cfg("optimizer=adamw")))
    assert hook is None and isinstance(opt, torch.optim.AdamW)


def test_schedules(compose_cfg):
    const = compose_cfg("schedule=constant", "schedule.warmup_epochs=1")
    assert [lr_factor(const, s, 4, 40) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    step = compose_cfg("schedule=step", "schedule.step_size=2", "schedule.gamma=0.5")
    assert [lr_factor(step, s, 10, 100) for s in (0, 19, 20, 39, 40)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    milestones = compose_cfg("schedule=step", "schedule.milestones=[3,5]", "schedule.gamma=0.1")
    assert [lr_factor(milestones, s, 1, 10) for s in (2, 3, 5)] == pytest.approx([1.0, 0.1, 0.01])
    cos = compose_cfg("schedule=cosine", "schedule.min_lr_ratio=0.1")
    assert lr_factor(cos, 0, 10, 100) == pytest.approx(1.0)
    assert lr_factor(cos, 50, 10, 100) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(cos, 100, 10, 100) == pytest.approx(0.1)


def test_scheduler_changes_the_optimizer_lr(compose_cfg):
    cfg = compose_cfg("schedule=cosine", "optimizer=sgd", "optimizer.lr=1.0")
    opt, _ = build_optimizer(cfg, quadratic_model(), Regimen.from_config(cfg))
    sched = build_scheduler(cfg, opt, steps_per_epoch=5, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.0) and lrs[5] == pytest.approx(0.5) and lrs == sorted(lrs, reverse=True)


def _big_gradients(model: nn.Module) -> list[nn.Parameter]:
    loss = 1000 * loss_of(model)
    loss.backward()
    return list(model.parameters())


def _global_norm(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def clipping(compose_cfg, mode: str, limit: float) -> Regimen:
    return Regimen.from_config(compose_cfg(f"regularizer.grad_clip.mode={mode}", f"regularizer.grad_clip.max={limit}"))


def test_norm_clipping_bounds_the_global_gradient_norm(compose_cfg):
    params = _big_gradients(quadratic_model())
    norm = _global_norm(params)
    fired = clipping(compose_cfg, "norm", 0.5).clip(params, norm)
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    assert norm.item() > 0.5 and bool(fired) and after.item() == pytest.approx(0.5, rel=1e-4)


def test_value_clipping_bounds_every_element(compose_cfg):
    params = _big_gradients(quadratic_model())
    fired = clipping(compose_cfg, "value", 0.01).clip(params, _global_norm(params))
    assert bool(fired) and max(p.grad.abs().max().item() for p in params) <= 0.01


def test_no_clipping_leaves_gradients_alone(compose_cfg):
    params = _big_gradients(quadratic_model())
    before = [p.grad.clone() for p in params]
    fired = clipping(compose_cfg, "none", 0.01).clip(params, _global_norm(params))
    assert not bool(fired) and all(torch.equal(a, p.grad) for a, p in zip(before, params))


# -- your own optimizer: optimizer._target_ ---------------------------------------------------------------
SIGN_SGD = '''
import torch


class SignSGD(torch.optim.Optimizer):
    """w <- w - lr * sign(grad + wd * w): an optimizer of the user's own."""

    def __init__(self, params, lr=0.01, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(torch.sign(p.grad + group["weight_decay"] * p), alpha=-group["lr"])


def not_an_optimizer(params, lr, weight_decay=0.0):
    return "adam"


class Strict(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)


class Fails(torch.optim.SGD):
    def __init__(self, params, lr, weight_decay=0.0, momentum=0.0, dampening=0.0):
        raise RuntimeError("needs a GPU")
'''


@pytest.fixture
def user_optim(tmp_path, monkeypatch):
    (tmp_path / "user_optim.py").write_text(SIGN_SGD)
    monkeypatch.syspath_prepend(str(tmp_path))
    import sys
    sys.modules.pop("user_optim", None)


def test_a_torch_optimizer_by_target_gets_the_regimens_decay_policy_params_and_schedule(compose_cfg, caplog):
    from regbench.optim import optimizer_name

    cfg = compose_cfg("optimizer._target_=torch.optim.Adadelta", "optimizer.lr=0.5", "optimizer.weight_decay=0.01",
                      "optimizer.decay_norm_and_bias=false", "+optimizer.params.rho=0.8", "schedule=cosine")
    model = quadratic_model()
    with caplog.at_level("WARNING", logger="regbench.optim"):
        optimizer, decoupled = build_optimizer(cfg, model, Regimen.from_config(cfg))
    assert "optimizer.params momentum, dampening: not arguments of torch.optim.Adadelta, left out" in caplog.text
    assert isinstance(optimizer, torch.optim.Adadelta) and decoupled is None and optimizer_name(cfg) == "adadelta"
    decayed, exempt = optimizer.param_groups
    assert (decayed["lr"], decayed["rho"], decayed["weight_decay"], exempt["weight_decay"]) == (0.5, 0.8, 0.01, 0.0)
    assert all(p.ndim == 1 for p in exempt["params"])  # biases: no decay, as for the built-in optimizers
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=10, total_steps=100)
    before = loss_of(model).item()
    for _ in range(50):
        optimizer.zero_grad()
        loss_of(model).backward()
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] < 0.5 and loss_of(model).item() < before

    cfg = compose_cfg("optimizer._target_=torch.optim.Adadelta", "optimizer.weight_decay=0.5",
                      "optimizer.decoupled_weight_decay=true", "optimizer.lr=0.1")
    optimizer, decoupled = build_optimizer(cfg, quadratic_model(), Regimen.from_config(cfg))
    assert decoupled is not None and optimizer.param_groups[0]["weight_decay"] == 0  # w -= lr * wd * w instead


def test_an_optimizer_of_the_users_own_trains_a_run_under_its_own_name(small_cfg, user_optim, tmp_path):
    from regbench import runner

    record = runner.run(small_cfg("cifar10", "optimizer=custom", "optimizer._target_=user_optim.SignSGD",
                                  "optimizer.lr=0.001", "trainer.max_epochs=2"), tmp_path / "run")
    assert record["status"] == "completed" and record["optimizer"] == "signsgd"
    assert record["config"]["optimizer"]["_target_"] == "user_optim.SignSGD"
    assert [c["target"] for c in record["code"]] == ["user_optim.SignSGD"]
    named = runner.run(small_cfg("cifar10", "optimizer=custom", "optimizer._target_=user_optim.SignSGD",
                                 "optimizer.name=sign", "optimizer.lr=0.001"), tmp_path / "named")
    assert named["optimizer"] == "sign"


@pytest.mark.parametrize("overrides,message", [
    (["optimizer=custom"], r"optimizer=custom needs optimizer._target_=PACKAGE.MODULE.CLASS"),
    (["optimizer._target_=user_optim.not_an_optimizer"],
     r"optimizer._target_=user_optim.not_an_optimizer returned a str, not a torch.optim.Optimizer"),
    (["optimizer._target_=user_optim.Fails"],
     r"optimizer._target_=user_optim.Fails failed: RuntimeError: needs a GPU \(regbench called it with the parameter "
     r"groups, lr=0.05, weight_decay=0.0005, momentum=0.9, dampening=0.0\)"),
    (["optimizer._target_=user_optim.Strict"], r"optimizer._target_=user_optim.Strict takes no weight_decay argument, "
                                               r"and optimizer.weight_decay=0.0005 asks for coupled decay"),
    (["optimizer._target_=user_optim.Nowhere"], r"optimizer._target_=user_optim.Nowhere: user_optim has no 'Nowhere'"),
])
def test_a_bad_optimizer_target_is_one_line_before_anything_trains(small_cfg, user_optim, tmp_path, overrides,
                                                                   message):
    from regbench import runner
    from regbench.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        runner.run(small_cfg("cifar10", *overrides), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()
