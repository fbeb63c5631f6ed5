"""The DeepSpeed engine an experiment trains in, and the fp32 weights that come out of it.

The network comes from :mod:`octvideo.train.network`, DeepSpeed's configuration from
:mod:`octvideo.train.deepspeed_config` (bf16 / fp16 run as autocast over fp32 weights, explained
there). DeepSpeed is imported where an engine is made: the job's driver, which builds networks
but no engine, never loads it (nor prints its accelerator banner on a user's error).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import torch

from octvideo.train.config import ExperimentConfig
from octvideo.train.deepspeed_config import deepspeed_config
from octvideo.train.finetune import freeze
from octvideo.train.network import build_network
from octvideo.train.optim import build_optimizer, build_scheduler
from octvideo.train.worker_logs import prints_to_debug_log

logger = logging.getLogger(__name__)


def build_engine(
    config: ExperimentConfig, num_classes: int, steps_per_epoch: int, start: Mapping[str, torch.Tensor] | None = None
) -> Any:
    """The experiment's network in a DeepSpeed engine on the current process group and device,
    compiled in place when ``model.compile`` (checkpoints keep the plain parameter names).
    The network starts from ``start`` (a state dict) when given, else from its initialisation;
    the parts of ``model.freeze`` take no gradient and stay out of the optimizer.

    ``model.memory_format`` is the activations' layout, set on the input
    (:class:`~octvideo.data.DeviceInput`): convolutions keep a channels-last input's layout.
    Weights stay contiguous, since DeepSpeed broadcasts them as bytes and ZeRO packs them into
    flat buffers; a convolution converts its (small) weight on the fly."""
    import deepspeed

    model = build_network(config.model, num_classes)
    if start is not None:
        model.load_state_dict(start)
    freeze(model, config.model.freeze)
    with prints_to_debug_log(logger):  # DeepSpeed prints its op builds
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            optimizer=build_optimizer(model, config.optim),
            lr_scheduler=functools.partial(build_scheduler, config=config.optim, steps_per_epoch=steps_per_epoch),
            config=deepspeed_config(config),
            dist_init_required=False,  # the caller's process group (Ray Train's, or the harness')
        )
    if config.model.compile:
        engine.compile(backend=config.model.compile_backend)
    return engine


def fp32_state_dict(engine: Any) -> dict[str, torch.Tensor]:
    """The trained weights as a plain fp32 ``state_dict`` on the CPU: the fp32 weights the
    optimizer updates, gathered from every rank's partition under ZeRO 1-3, and the buffers
    (batch-norm statistics: average them across ranks first). Collective under ZeRO 1-3:
    every rank must call it; all ranks get the whole dict."""
    from deepspeed.utils import safe_get_full_fp32_param

    module = engine.module
    state = {}
    for name, param in module.named_parameters():
        full = safe_get_full_fp32_param(param)  # None outside ZeRO: the parameter is the fp32 weight
        state[name] = (param.detach() if full is None else full).float().cpu().clone()
    for name, buffer in module.named_buffers():
        state[name] = buffer.detach().cpu().clone()
        if buffer.is_floating_point():
            state[name] = state[name].float()
    # named_parameters lists shared parameters once; state_dict's order and names are the reference.
    return {name: state[name] for name in module.state_dict()}
