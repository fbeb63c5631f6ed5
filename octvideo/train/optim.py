"""Optimizer and learning-rate schedule: PySlowFast's Kinetics recipe, stepped per optimizer step.

Schedule: cosine decay from ``lr`` to 0 over the whole run, ``lr(t) = lr * (1 + cos(pi t / T)) / 2``,
with a linear warm-up from ``warmup_start_lr`` to the cosine's value at the end of the warm-up
(PySlowFast's SOLVER.LR_POLICY "cosine" with WARMUP_EPOCHS, where t counts epochs; here t is the
fractional epoch of each step, so the schedule is smooth and resumes exactly from a step count).
Weight decay skips batch-norm parameters and biases unless asked (PySlowFast's BN.WEIGHT_DECAY 0).
Parameters that need no gradient (frozen parts) are left out; ``lr_mult`` scales the learning
rate of parts of the network (:mod:`octvideo.train.finetune`), the schedule applying to each
group's own base rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .config import OptimConfig
from .finetune import learning_rate_multiplier


def learning_rate(epoch: float, config: OptimConfig) -> float:
    """The learning rate at fractional ``epoch`` (0 <= epoch <= config.epochs)."""

    def cosine(t: float) -> float:
        return config.lr * (1.0 + math.cos(math.pi * t / config.epochs)) / 2.0

    if epoch < config.warmup_epochs:
        end = cosine(config.warmup_epochs)
        return config.warmup_start_lr + (end - config.warmup_start_lr) * epoch / config.warmup_epochs
    return cosine(epoch)


def parameter_groups(
    model: nn.Module, weight_decay: float, decay_norm_and_bias: bool, lr: float, lr_mult: Mapping[str, float] | None = None
) -> list[dict]:
    """Weights that decay, and norm parameters and biases (1-D tensors) that do not, each split by
    learning-rate multiplier; the groups at the plain rate first (the rate the job reports)."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            decays = decay_norm_and_bias or parameter.ndim > 1
            groups.setdefault((learning_rate_multiplier(name, lr_mult or {}), decays), []).append(parameter)
    order = sorted(groups, key=lambda key: (key[0] != 1.0, key[0], not key[1]))
    return [
        {"params": groups[mult, decays], "weight_decay": weight_decay if decays else 0.0, "lr": lr * mult}
        for mult, decays in order
    ]


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay, config.decay_norm_and_bias, config.lr, config.lr_mult)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule; its state (the step count) is part of every checkpoint."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate(step / steps_per_epoch, config) / config.lr
    )
