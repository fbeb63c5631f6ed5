import math

import pytest
import torch

from octvideo.models import build_model
from octvideo.train.config import OptimConfig
from octvideo.train.optim import build_optimizer, build_scheduler, learning_rate, parameter_groups


def test_schedule_follows_the_recipe():
    config = OptimConfig(lr=0.1, epochs=196, warmup_epochs=34, warmup_start_lr=0.01)
    end_of_warmup = 0.1 * (1 + math.cos(math.pi * 34 / 196)) / 2
    assert learning_rate(0, config) == pytest.approx(0.01)
    assert learning_rate(17, config) == pytest.approx((0.01 + end_of_warmup) / 2)
    assert learning_rate(34, config) == pytest.approx(end_of_warmup)
    assert learning_rate(98, config) == pytest.approx(0.05)
    assert learning_rate(196, config) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_steps_per_optimizer_step_and_resumes_from_its_state():
    model = torch.nn.Linear(4, 2)
    config = OptimConfig(lr=0.1, epochs=4, warmup_epochs=1, warmup_start_lr=0.0)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=10)
    for _ in range(15):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(1.5, config))
    fresh_optimizer = build_optimizer(model, config)
    fresh = build_scheduler(fresh_optimizer, config, steps_per_epoch=10)
    fresh.load_state_dict(scheduler.state_dict())
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    fresh_optimizer.step()
    fresh.step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(1.6, config))


def test_no_weight_decay_on_norm_and_bias():
    model = build_model("oct_i3d_r18", alpha=0.5, width=8, num_classes=3)
    decay, no_decay = parameter_groups(model, 1e-4, decay_norm_and_bias=False, lr=0.1)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == sum(p.numel() for p in model.parameters())
    (everything,) = parameter_groups(model, 1e-4, decay_norm_and_bias=True, lr=0.1)
    assert len(everything["params"]) == len(list(model.parameters()))
