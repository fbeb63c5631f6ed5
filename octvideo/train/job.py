"""A training job: a Ray Train ``TorchTrainer`` over :func:`~octvideo.train.loop.train_loop_per_worker`.

The run lives in ``{checkpoint.storage_path}/{checkpoint.name}`` (a folder or an fsspec/pyarrow
URL shared by all nodes); running the same name again resumes from its latest checkpoint, and a
failed worker is replaced and resumes from it too (``checkpoint.max_failures`` times). When
training is done the latest checkpoint is consolidated into ``model_fp32.pt`` in the run folder:
a plain fp32 ``state_dict`` for :func:`~octvideo.train.loop.build_network`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray.train
from ray.train.torch import TorchTrainer

from octvideo.train.checkpoint import export_fp32_weights
from octvideo.train.config import ConfigError, ExperimentConfig, config_to_dict
from octvideo.train.loop import DEFAULT_REPORT_EVERY, train_loop_per_worker
from octvideo.train.tracking import Tracker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobResult:
    """Ray Train's result (latest checkpoint and its metrics) and where the fp32 weights went
    (a path on ``result.checkpoint.filesystem``)."""

    result: ray.train.Result
    weights_path: str


def check_supported(config: ExperimentConfig) -> None:
    """Raise ConfigError for a valid configuration this job cannot run yet (before any cluster work)."""
    if config.model.pretrained is not None:
        raise ConfigError("model.pretrained: starting from pretrained weights is not supported by the training job yet")


def build_trainer(
    config: ExperimentConfig, tracker: Tracker | None = None, report_every: int = DEFAULT_REPORT_EVERY
) -> TorchTrainer:
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    checkpoint = config.checkpoint
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config_to_dict(config), "tracker": tracker, "report_every": report_every},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            storage_path=checkpoint.storage_path,
            name=checkpoint.name,
            failure_config=ray.train.FailureConfig(max_failures=checkpoint.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoint.keep_last),
        ),
    )


def run_job(
    config: ExperimentConfig, tracker: Tracker | None = None, report_every: int = DEFAULT_REPORT_EVERY
) -> JobResult:
    """Train (or resume) to the end and export the consolidated fp32 weights. Needs Ray to be
    initialised (``ray.init()``) or reachable; raises Ray Train's error if training fails."""
    check_supported(config)
    result = build_trainer(config, tracker, report_every).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {config.checkpoint.name} finished without a checkpoint")
    weights = export_fp32_weights(result.checkpoint)
    logger.info("run %s done: %s; weights at %s", config.checkpoint.name, result.metrics, weights)
    return JobResult(result, weights)
