"""DeepSpeed's configuration dict for an experiment (pure data: DeepSpeed is not imported here).

Precision. ``deepspeed.precision: bf16`` (or ``fp16``) runs as PyTorch autocast, through
DeepSpeed's ``torch_autocast`` mode, not DeepSpeed's ``bf16`` mode: the weights, the optimizer
and every batch norm (parameters and running statistics) stay fp32, the convolutions run in
bf16, and gradients are fp32. DeepSpeed's ``bf16`` mode casts the whole module, batch norm
included, and under ZeRO-0 keeps the fp32 master weights inside its optimizer only. With
autocast the fp32 weights are the module's, at every ZeRO stage, and
:func:`octvideo.train.engine.fp32_state_dict` exports exactly what the optimizer updates.

Gradients are all-reduced in ``deepspeed.communication_dtype`` (fp32 by default: sums over many
ranks lose nothing; bf16 halves the traffic).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from octvideo.nn import OctConv2d, OctConv3d
from octvideo.train.config import ExperimentConfig

_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
#: Module classes whose gradients may be all-reduced in the autocast dtype (communication_dtype).
_LOW_PRECISION_GRADIENT_MODULES = [
    f"{cls.__module__}.{cls.__name__}" for cls in (OctConv3d, OctConv2d, nn.Conv3d, nn.Conv2d, nn.Linear)
]


def deepspeed_config(config: ExperimentConfig) -> dict[str, Any]:
    """DeepSpeed's configuration dict for an experiment."""
    ds = config.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=ds.overlap_comm, contiguous_gradients=True)
    if ds.zero_stage and ds.reduce_bucket_size is not None:
        zero["reduce_bucket_size"] = ds.reduce_bucket_size
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    options: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.optim.batch_size_per_worker,
        "gradient_accumulation_steps": config.optim.grad_accumulation,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
    }
    if ds.precision != "fp32":
        low_precision = ds.communication_dtype != "fp32"
        options["torch_autocast"] = {
            "enabled": True,
            "dtype": _AUTOCAST_DTYPES[ds.precision],
            # Parameters of these classes are reduced in the autocast dtype; none: all in fp32.
            "lower_precision_safe_modules": _LOW_PRECISION_GRADIENT_MODULES if low_precision else [],
        }
    if ds.zero_stage and config.optim.optimizer == "sgd":
        # DeepSpeed lists only Adam-like optimizers as tested with ZeRO; SGD is element-wise, so
        # it works unchanged on the flat partitions ZeRO gives it.
        options["zero_allow_untested_optimizer"] = True
    if ds.offload_optimizer:
        options["zero_force_ds_cpu_optimizer"] = False  # keep the configured torch optimizer
    if config.optim.clip_grad_norm is not None:
        options["gradient_clipping"] = config.optim.clip_grad_norm
    return options
