"""Fine-tuning controls: parts of a network named by module (``stem``, ``layer1``, ``layer4.2``,
``fc``; SlowFast: ``slow_stem``, ``fast_layers.0``, ``laterals``, ...), frozen or trained at a
multiple of the learning rate.

A frozen part keeps its loaded weights (no gradient, not in the optimizer) and its batch-norm
statistics (its batch norms run in eval mode during training, as in MMAction2's ``norm_eval``).
``model.freeze_bn_stats`` does the latter for every batch norm of the network: the usual choice
when fine-tuning with small per-GPU batches. The learning-rate multiplier of a parameter is that
of the most specific part naming it (``layer4.2`` over ``layer4``); the schedule scales every
group alike.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from octvideo.train.config import ConfigError, ExperimentConfig

logger = logging.getLogger(__name__)


def _under(name: str, part: str) -> bool:
    return name == part or name.startswith(part + ".")


def check_parts(model: nn.Module, config: ExperimentConfig) -> None:
    """ConfigError naming every part of ``model.freeze`` / ``optim.lr_mult`` that is not a module of
    the network with parameters, and every multiplier given to a frozen part."""
    modules = {name for name, module in model.named_modules() if name and any(True for _ in module.parameters())}
    top = sorted({name.split(".")[0] for name in modules})
    model_name = getattr(model, "model_name", config.model.name)
    problems = []
    for key, parts in (("model.freeze", config.model.freeze), ("optim.lr_mult", list(config.optim.lr_mult))):
        for part in parts:
            if part not in modules:
                problems.append(f"{key}: {model_name} has no part {part!r} with weights; its parts: {', '.join(top)}")
    for part in config.optim.lr_mult:
        frozen = [f for f in config.model.freeze if _under(part, f)]
        if frozen:
            problems.append(f"optim.lr_mult: {part!r} is frozen (model.freeze: {frozen[0]!r}); it has no learning rate")
    if problems:
        raise ConfigError("the fine-tuning parts do not match the model:\n" + "\n".join(f"  {p}" for p in problems))


def freeze(model: nn.Module, parts: Sequence[str]) -> None:
    """No gradient for the parameters under ``parts``."""
    for name, parameter in model.named_parameters():
        if any(_under(name, part) for part in parts):
            parameter.requires_grad_(False)


def frozen_batch_norms(model: nn.Module, parts: Sequence[str], all_statistics: bool) -> list[nn.Module]:
    """The batch norms that keep their statistics: those under ``parts``, or all with ``all_statistics``."""
    return [
        module for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (all_statistics or any(_under(name, p) for p in parts))
    ]


def keep_statistics(batch_norms: Iterable[nn.Module]) -> None:
    """Put ``batch_norms`` in eval mode (call after ``model.train()``): they normalise with, and
    keep, their running statistics."""
    for module in batch_norms:
        module.eval()


def learning_rate_multiplier(name: str, lr_mult: Mapping[str, float]) -> float:
    """The multiplier of parameter ``name``: that of the most specific part holding it, else 1."""
    parts = [part for part in lr_mult if _under(name, part)]
    return lr_mult[max(parts, key=len)] if parts else 1.0


def describe_finetuning(config: ExperimentConfig) -> str:
    """One line for the log: what is frozen and scaled ("" when nothing is)."""
    model, lr_mult = config.model, config.optim.lr_mult
    words = []
    if model.freeze:
        words.append(f"frozen: {', '.join(model.freeze)}")
    if model.freeze_bn_stats:
        words.append("all batch-norm statistics frozen")
    if lr_mult:
        words.append("learning rate x " + ", ".join(f"{m:g} for {part}" for part, m in lr_mult.items()))
    return "; ".join(words)
