"""A training job: a Ray Train ``TorchTrainer`` over :func:`~octvideo.train.loop.train_loop_per_worker`,
tracked in MLflow from the driver (rank 0 of the workers logs the run's metrics).

    job = prepare_job(config)      # no cluster work: checks tracking and data, opens the MLflow run
    outcome = run_job(job)         # train or resume, export fp32 weights, register the model

The run lives in ``{checkpoint.storage_path}/{checkpoint.name}`` (a folder or an fsspec/pyarrow
URL shared by all nodes); running the same name again resumes from its latest checkpoint, and a
failed worker is replaced and resumes from it too (``checkpoint.max_failures`` times). When
training is done the workers export the fp32 weights as ``model_fp32.pt`` in the run folder
(a plain fp32 ``state_dict`` for :func:`~octvideo.train.network.build_network`), the training curves
are drawn from MLflow's history of the whole run, and the model is registered under
``tracking.registered_model_name`` with the test top-1 that decides its aliases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray
import ray.train
import torch
from ray.train.torch import TorchTrainer

from octvideo.data import Manifest, load_manifest, model_input
from octvideo.data.storage import (
    RetryPolicy,
    StorageUnavailable,
    is_transient,
    retry_storage_call,
    storage_error_message,
    storage_errors,
)
from octvideo.models import PretrainedLoad, build_model
from octvideo.profile import profile_model
from octvideo.train.checkpoint import load_weights
from octvideo.train.config import ConfigError, ExperimentConfig, check_inputs, config_to_dict
from octvideo.train.finetune import check_parts
from octvideo.train.model_registry import Registration
from octvideo.train.network import build_network, network_options
from octvideo.train.pretrained import start_file, start_from_source, write_start
from octvideo.train.run_storage import WEIGHTS_FILE, run_storage
from octvideo.train.run_summary import DESCRIPTION_TAG, MANIFEST_CONTEXTS, manifest_datasets, run_description
from octvideo.train.tracking import Tracker, start_tracker

logger = logging.getLogger(__name__)

#: Metrics drawn against the step, and against the epoch, in the run's two training-curve figures.
STEP_CURVES = ("loss", "lr", "clips_per_s", "data_wait_share")
EPOCH_CURVES = ("epoch/val_clip_top1", "epoch/val_clip_top5", "epoch/val_video_top1", "epoch/val_video_top5")


@dataclass
class PreparedJob:
    """A configuration checked against the world (data readable, tracking reachable) and its run's tracker."""

    config: ExperimentConfig
    tracker: Tracker
    label_map: dict[str, int]
    start: PretrainedLoad | None = None  # what model.pretrained gave the network

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes or len(self.label_map)


@dataclass(frozen=True)
class JobResult:
    """Ray Train's result (latest checkpoint and its metrics), where the fp32 weights went (a path
    on ``result.checkpoint.filesystem``) and the model's registration (None when not registered)."""

    result: ray.train.Result
    weights_path: str
    registration: Registration | None
    tracking_run_id: str | None


def read_manifest(config: ExperimentConfig, key: str) -> Manifest:
    """The manifest ``data.<key>`` (``train_manifest``, ...), read through storage outages of up to
    ``data.storage_timeout_s``; ConfigError naming it when it cannot be read. Lists the videos'
    folders (Kinetics CSVs, trees), reads no video."""
    data = config.data
    url = getattr(data, key)
    options = data.client_options(url)
    try:
        return retry_storage_call(
            lambda: load_manifest(url, data.root, storage_options=options),
            RetryPolicy.for_outages_up_to(data.storage_timeout_s),
            f"reading {url}",
        )
    except ValueError as error:
        raise ConfigError(f"data.{key}: {error}") from error
    except storage_errors() as error:
        raise ConfigError(f"data.{key}: {storage_error_message(url, error)}") from error


def dataset_label_map(config: ExperimentConfig, train: Manifest) -> dict[str, int]:
    """The label map (class name -> index) of ``train``, the training split's manifest. Bare
    ``path label`` lists get names ``"0"``, ``"1"``, ..."""
    if train.label_map is not None:
        return dict(train.label_map)
    return {str(index): index for index in range(config.model.num_classes or train.num_classes)}


def prepare_job(config: ExperimentConfig, tracker: Tracker | None = None) -> PreparedJob:
    """Everything that can fail before cluster work: its manifests, training data and pretrained
    source (ConfigError), the fine-tuning parts (ConfigError), the tracking server
    (TrackingUnavailable). Converts the pretrained source into the run's starting weights
    (:mod:`octvideo.train.pretrained`). Opens (or resumes) the MLflow run, unless ``tracker`` is
    given, and logs the config, the label map, the manifests as dataset inputs, the run's
    description (:mod:`octvideo.train.run_summary`), the start and the model's parameters and
    multiply-accumulates per clip."""
    check_inputs(config)
    manifests = {
        key: read_manifest(config, key) for key in MANIFEST_CONTEXTS if getattr(config.data, key) is not None
    }
    label_map = dataset_label_map(config, manifests["train_manifest"])
    torch.manual_seed(config.seed)  # the classifier a pretrained start re-initialises
    model = build_network(config.model, config.model.num_classes or len(label_map))
    check_parts(model, config)
    start = None
    if config.model.pretrained is not None:
        class_names = sorted(label_map, key=label_map.__getitem__)
        start = start_from_source(model, config, class_names, config.tracking.tracking_uri)
        _write_start(model, config)
    tracker = tracker if tracker is not None else start_tracker(config, rank=0)
    job = PreparedJob(config, tracker, label_map, start)
    tracker.log_config(config)
    tracker.log_label_map(label_map)
    tracker.log_datasets(manifest_datasets(config, manifests))
    tracker.set_tags({DESCRIPTION_TAG: run_description(config, manifests, resumed=tracker.resumed)})
    if start is not None:
        tracker.set_tags({"octvideo.pretrained.source": config.model.pretrained.source,
                          "octvideo.pretrained.format": start.format, "octvideo.pretrained.head": start.head})
    clip = config.data.clip
    one_clip = torch.zeros(1, 3, clip.num_frames, clip.crop, clip.crop, dtype=torch.uint8)  # as the loader gives it
    size = profile_model(model, model_input(one_clip, getattr(model, "speed_ratio", None)))
    tracker.log_model_size(size.total_macs, size.total_params)
    return job


def _write_start(model: torch.nn.Module, config: ExperimentConfig) -> None:
    try:
        url = write_start(model.state_dict(), config)
    except storage_errors() as error:
        raise ConfigError(f"checkpoint.storage_path: {storage_error_message(start_file(config), error)}") from error
    logger.info("wrote the starting weights to %s", url)


def _train_on_worker(loop_config: dict) -> None:
    """:func:`octvideo.train.loop.train_loop_per_worker`, imported where it runs: the loop's imports
    (the data path, torchvision's transforms with torch's compiler stack) are the workers' own, not
    the driver's, which only hands this function to Ray Train (3 s of each job's start on a 2-vCPU
    AMD EPYC with AVX2)."""
    from octvideo.train.loop import train_loop_per_worker

    train_loop_per_worker(loop_config)


def build_trainer(job: PreparedJob) -> TorchTrainer:
    config = job.config
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    checkpoint = config.checkpoint
    storage_path, storage_filesystem = run_storage(
        checkpoint.storage_path, checkpoint.storage_options, RetryPolicy.for_outages_up_to(checkpoint.storage_timeout_s)
    )
    return TorchTrainer(
        _train_on_worker,
        train_loop_config={"config": config_to_dict(config), "tracker": job.tracker},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            name=checkpoint.name,
            failure_config=ray.train.FailureConfig(max_failures=checkpoint.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoint.keep_last),
        ),
    )


def run_job(job: PreparedJob) -> JobResult:
    """Train (or resume) to the end (the workers export the fp32 weights), draw the training
    curves and register the model. Starts a local Ray unless one is initialised or reachable
    (``RAY_ADDRESS``); raises Ray Train's error if training fails, after marking the MLflow
    run FAILED."""
    config, tracker = job.config, job.tracker
    try:
        check_decoder_resources(config)
        result = build_trainer(job).fit()
        weights = f"{result.path}/{WEIGHTS_FILE}"
        with result.filesystem.open_input_file(weights) as file:
            state = load_weights(file)
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.log_training_curves(STEP_CURVES)
    tracker.log_training_curves(EPOCH_CURVES, "plots/epoch_curves.png", x_label="epoch")
    registration = _register(job, state, result.metrics or {})
    tracker.close()
    return JobResult(result, weights, registration, tracker.run_id)


def check_decoder_resources(config: ExperimentConfig) -> None:
    """With ``data.ingest: ray_data``, raise ConfigError unless some node of the cluster (Ray
    initialised) offers each resource a decode actor asks for: the pipeline would wait for ever."""
    if config.data.ingest != "ray_data":
        return
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    for name, amount in config.data.decoder_resources.items():
        if amount and max((node.get(name, 0.0) for node in nodes), default=0.0) < amount:
            offered = sorted({key for node in nodes for key in node if not key.startswith("node:")})
            raise ConfigError(
                f"data.decoder_resources: each decode actor asks for {name}={amount:g}, which no node of the cluster "
                f"offers (they offer {', '.join(offered)}); join a decode node with "
                f"`ray start --resources '{{\"{name}\": N}}'` or change data.decoder_resources"
            )


def training_failure(error: BaseException) -> str:
    """What made training fail, for one line under the log: the first failed worker's error
    (Ray Train wraps it with its traceback, which the log already holds), else Ray's message.
    A raw connection error is storage that stayed down through the client's own retries: Ray
    Train's writes of the run state, or a worker's storage call."""
    for rank, failure in sorted((getattr(error, "worker_failures", None) or {}).items()):
        cause = _storage_outage_named(getattr(failure, "_base_exc", failure), f"rank {rank}'s storage call")
        return f"training failed on rank {rank}: {type(cause).__name__}: {cause}"
    cause = _storage_outage_named(getattr(error, "controller_failure", error), "Ray Train saving the run state")
    return f"training failed: {type(cause).__name__}: {cause}"


def _storage_outage_named(cause: BaseException, what: str) -> BaseException:
    return StorageUnavailable.failed(what, cause) if is_transient(cause) else cause


def _register(job: PreparedJob, state: dict[str, torch.Tensor], metrics: dict) -> Registration | None:
    name = job.config.tracking.registered_model_name
    if name is None:
        return None
    if "test_video_top1" not in metrics:
        logger.warning("not registering %s: the run's last report has no test accuracy", name)
        return None
    options = network_options(job.config.model, job.num_classes)
    model = build_model(job.config.model.name, **options)
    model.load_state_dict(state)
    start = job.config.model.pretrained
    return job.tracker.register_trained_model(
        model, name, build_kwargs=options, label_map=job.label_map, clip=job.config.data.clip,
        test_top1=float(metrics["test_video_top1"]), global_step=int(metrics["global_step"]),
        description=None if start is None else f"Started from {start.source} ({job.start.format}); head {job.start.head}.",
    )
