"""Experiment configuration: YAML files validated by a pydantic schema, with dotted overrides.

    config = load_config("configs/demo.yaml", overrides=["optim.lr=0.1", "model.alpha=0.25"])

Every section forbids unknown keys, so a typo fails before any cluster work with a
message that names the key; all problems are reported at once, as ``ConfigError``
(a ``ValueError``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, Literal

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from octvideo.data.storage import bounded_storage_options, filesystem, storage_error_message, storage_errors


class ConfigError(ValueError):
    """A configuration that cannot run; the message lists every problem by its dotted key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PretrainedConfig(_Section):
    """Where a run's weights start (see :mod:`octvideo.models.pretrained` for the formats)."""

    source: str = Field(description="checkpoint URL (fsspec), or a registered model models:/NAME@ALIAS or models:/NAME/VERSION")
    format: Literal["auto", "torchvision", "pytorchvideo", "octvideo"] = Field(
        "auto", description="auto: detected from the parameter names"
    )
    inflate: Literal["centre", "mean"] = Field("centre", description="how a 2-D (ImageNet) kernel becomes 3-D")
    head: Literal["auto", "keep", "reset"] = Field(
        "auto",
        description="auto: the classifier is re-initialised when the class count differs (a registered model: when its "
        "classes differ); reset: always; keep: a different count is an error",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for source")

    @property
    def registered(self) -> bool:
        return self.source.startswith("models:/")


class ModelConfig(_Section):
    name: str = "oct_i3d_r50"
    alpha: float = Field(0.0, ge=0.0, lt=1.0, description="share of low-frequency channels")
    octave_pool: tuple[int, int, int] = (1, 2, 2)
    last_stage_alpha: float | None = Field(None, ge=0.0, lt=1.0)
    width: int | None = Field(None, ge=1, description="base channel width; None: the model's default")
    num_classes: int | None = Field(None, ge=1, description="None: the number of classes in the label map")
    pretrained: PretrainedConfig | None = Field(None, description="weights to start from (a URL alone: its source)")
    freeze: list[str] = Field(
        default_factory=list, description="parts (module names: stem, layer1, ...) whose weights and batch-norm statistics stay as loaded"
    )
    freeze_bn_stats: bool = Field(False, description="every batch norm keeps its loaded statistics (eval mode in training)")
    dropout: float = Field(0.5, ge=0.0, lt=1.0)
    memory_format: Literal["contiguous", "channels_last"] = Field(
        "contiguous", description="layout of the activations; channels_last: torch.channels_last_3d"
    )
    compile: bool = Field(False, description="torch.compile the network the engine trains")
    compile_backend: str = Field("inductor", description="torch.compile backend (inductor; aot_eager to debug)")

    @field_validator("pretrained", mode="before")
    @classmethod
    def _source_alone(cls, value: Any) -> Any:
        return {"source": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from octvideo.models import list_models, similar_models

        if name not in list_models():
            close = similar_models(name)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"unknown model {name!r}{hint}; known models: {', '.join(list_models())}")
        return name

    @field_validator("octave_pool")
    @classmethod
    def _pool(cls, pool: tuple[int, int, int]) -> tuple[int, int, int]:
        if pool not in ((1, 2, 2), (2, 2, 2)):
            raise ValueError(f"octave_pool must be [1, 2, 2] (spatial) or [2, 2, 2] (spatio-temporal), got {list(pool)}")
        return pool


class ClipConfig(_Section):
    """PySlowFast's clip recipe: ``num_frames`` frames ``sampling_rate`` apart at ``target_fps``."""

    num_frames: int = Field(8, ge=1)
    sampling_rate: int = Field(8, ge=1)
    target_fps: float = Field(30.0, gt=0)
    train_short_side: tuple[int, int] = (256, 320)
    crop: int = Field(224, ge=16, description="training crop")
    flip_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="training horizontal flips; 0 when a mirror turns one class into another (left / right motion)"
    )
    eval_short_side: int = Field(256, ge=16)
    eval_crop: int = Field(256, ge=16, description="validation / test crop (PySlowFast tests 3 x 256 crops)")
    train_clips: int = Field(
        1, ge=1, description="temporal clips per training video, from one decode (PySlowFast's TRAIN_CROP_NUM_TEMPORAL)"
    )
    train_crops: int = Field(1, ge=1, description="crops (with flips) per training clip (PySlowFast's AUG.NUM_SAMPLE); batches count clips")
    test_clips: int = Field(10, ge=1)
    test_crops: Literal[1, 3] = 3

    @model_validator(mode="after")
    def _sizes(self) -> ClipConfig:
        low, high = self.train_short_side
        if not 0 < low <= high:
            raise ValueError(f"train_short_side must be [min, max] with 0 < min <= max, got {[low, high]}")
        if low < self.crop:
            raise ValueError(f"crop {self.crop} is larger than the smallest training short side {low}")
        if self.eval_short_side < self.eval_crop:
            raise ValueError(f"eval_crop {self.eval_crop} is larger than eval_short_side {self.eval_short_side}")
        return self


class DataConfig(_Section):
    """One manifest per split: a Kinetics CSV, a 'path label' list or a class-folder tree (URLs)."""

    train_manifest: str
    val_manifest: str
    test_manifest: str | None = Field(None, description="None: the validation manifest (Kinetics test labels are not public)")
    root: str | None = Field(None, description="where videos lie; None: next to each manifest")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    clip: ClipConfig = ClipConfig()
    workers: int = Field(4, ge=0, description="DataLoader worker processes per training worker")
    prefetch_factor: int = Field(2, ge=1, description="batches each DataLoader worker keeps ready")
    decode_threads: int = Field(1, ge=0)
    prefetch_videos: int = Field(
        8, ge=0, description="remote videos each DataLoader worker downloads ahead, whole, while it decodes (0: off)"
    )
    ingest: Literal["dataloader", "ray_data"] = Field(
        "dataloader",
        description="how training clips are decoded: DataLoader workers beside each training worker, or a Ray Data "
        "actor pool per training worker on any node with decoder_resources (CPU-only nodes included)",
    )
    decoders: int = Field(2, ge=1, description="ray_data: decode actors per training worker")
    decoder_resources: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0},
        description='ray_data: what each decode actor asks of Ray, e.g. {"CPU": 1} or {"decode": 1} for nodes that offer it',
    )
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)
    storage_timeout_s: float = Field(
        60.0, gt=0, description="how long a video or manifest read retries through a storage outage before the run fails"
    )

    @field_validator("decoder_resources")
    @classmethod
    def _non_negative_resources(cls, resources: dict[str, float]) -> dict[str, float]:
        if not resources or any(not amount >= 0 for amount in resources.values()) or not any(resources.values()):
            raise ValueError(f'need amounts >= 0, not all 0, e.g. {{"CPU": 1}} or {{"decode": 1}}; got {resources}')
        return resources

    def client_options(self, url: str) -> dict[str, Any]:
        """``storage_options`` for reading ``url``, each request bounded by ``storage_timeout_s``."""
        return bounded_storage_options(url, self.storage_options, self.storage_timeout_s)


class OptimConfig(_Section):
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, description="peak learning rate for the whole job (all workers)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    decay_norm_and_bias: bool = Field(False, description="apply weight decay to batch norm and biases too")
    epochs: int = Field(196, ge=1)
    warmup_epochs: float = Field(34.0, ge=0.0)
    warmup_start_lr: float = Field(0.01, ge=0.0)
    batch_size_per_worker: int = Field(8, ge=1)
    grad_accumulation: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    lr_mult: dict[str, float] = Field(
        default_factory=dict, description="learning-rate multiplier per part (module name: fc, layer4, ...); the most specific part wins"
    )

    @field_validator("lr_mult")
    @classmethod
    def _positive_multipliers(cls, lr_mult: dict[str, float]) -> dict[str, float]:
        bad = {part: m for part, m in lr_mult.items() if not m > 0}
        if bad:
            raise ValueError(f"learning-rate multipliers must be positive, got {bad}")
        return lr_mult

    @model_validator(mode="after")
    def _warmup(self) -> OptimConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})")
        return self


class DeepSpeedConfig(_Section):
    """DeepSpeed settings; bf16 / fp16 run as autocast over fp32 weights (octvideo.train.deepspeed_config)."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    communication_dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="dtype of the gradient all-reduce; the autocast dtype halves its traffic"
    )
    overlap_comm: bool = Field(True, description="ZeRO 2-3: reduce gradient buckets while the backward pass goes on")
    reduce_bucket_size: int | None = Field(None, ge=1, description="ZeRO 1-3: elements per gradient bucket; None: DeepSpeed's")
    offload_optimizer: bool = False
    offload_params: bool = False

    @model_validator(mode="after")
    def _combinations(self) -> DeepSpeedConfig:
        if self.communication_dtype != "fp32" and self.communication_dtype != self.precision:
            raise ValueError(
                f"communication_dtype {self.communication_dtype} needs precision {self.communication_dtype} "
                f"(got {self.precision}); gradients are fp32 otherwise"
            )
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        return self


class ScalingConfig(_Section):
    num_workers: int = Field(2, ge=1, description="training workers: one per GPU")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per worker, its DataLoader workers included")
    gpus_per_worker: float = Field(1.0, ge=0, description="with use_gpu: exactly 1 (a worker drives one GPU)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"

    @model_validator(mode="after")
    def _one_gpu_per_worker(self) -> ScalingConfig:
        if self.use_gpu and self.gpus_per_worker != 1:
            raise ValueError(
                f"gpus_per_worker must be 1 with use_gpu (got {self.gpus_per_worker:g}): each worker trains "
                "on one GPU, cuda:LOCAL_RANK, with one NCCL rank; use num_workers for more GPUs"
            )
        return self


class CheckpointConfig(_Section):
    storage_path: str = Field("./runs", description="a folder or fsspec URL shared by all nodes, s3:// included")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for storage_path")
    name: str = Field("octvideo", description="run name; re-submitting the same name resumes")
    every_steps: int | None = Field(None, ge=1, description="also checkpoint every N steps, besides epoch ends")
    keep_last: int = Field(3, ge=1)
    max_failures: int = Field(3, ge=-1, description="worker failures to recover from; -1: unlimited")
    storage_timeout_s: float = Field(
        300.0, gt=0, description="how long checkpoint uploads and downloads retry through a storage outage"
    )

    def client_options(self, url: str) -> dict[str, Any]:
        """``storage_options`` for ``url`` on the run's storage, each request bounded by ``storage_timeout_s``."""
        return bounded_storage_options(url, self.storage_options, self.storage_timeout_s)


class TrackingConfig(_Section):
    tracking_uri: str | None = Field(None, description="None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment: str = "octvideo"
    artifact_location: str | None = Field(
        None, description="where a new experiment keeps its artifacts (s3://..., gs://..., a folder); "
        "None: the tracking server's choice, or mlartifacts/ beside a SQLite store's file",
    )
    log_every_steps: int = Field(10, ge=1, description="optimizer steps between metric reports")
    registered_model_name: str | None = None
    system_metrics_every_s: float | None = Field(
        15.0, gt=0, description="seconds between samples of rank 0's CPU, memory, disk, network and GPU use; None: off"
    )


class ExperimentConfig(_Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    scaling: ScalingConfig = ScalingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _precision_on_cpu(self) -> ExperimentConfig:
        if not self.scaling.use_gpu and self.deepspeed.precision == "fp16":
            raise ValueError("deepspeed.precision fp16 needs GPUs; on CPU use bf16 or fp32")
        return self

    @model_validator(mode="after")
    def _whole_videos_per_batch(self) -> ExperimentConfig:
        clip = self.data.clip
        views = clip.train_clips * clip.train_crops
        if self.optim.batch_size_per_worker % views:
            raise ValueError(
                f"optim.batch_size_per_worker ({self.optim.batch_size_per_worker}) must be a multiple of "
                f"data.clip.train_clips x train_crops ({views}): a video's clips come from one decode, in one batch"
            )
        return self


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        *parents, leaf = key.strip().split(".")
        node = raw
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parents[: i + 1])} is not a section")
            node = child
        node[leaf] = yaml.safe_load(text) if text.strip() else None
    return raw


def _section_keys(path: Sequence[str]) -> list[str]:
    """The keys allowed in the section at dotted ``path`` (empty: the top level); [] if none is there."""
    section: Any = ExperimentConfig
    for part in path:
        field = section.model_fields.get(part)
        section = field.annotation if field is not None else None
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return []
    return list(section.model_fields)


def _unknown_key(loc: Sequence[str]) -> str:
    """``unknown key``, with the likely intended key (or the allowed ones) when the section is known."""
    known = _section_keys(loc[:-1])
    close = difflib.get_close_matches(loc[-1], known, n=2)
    if close:
        return f"unknown key (did you mean {' or '.join(close)}?)"
    return f"unknown key; allowed: {', '.join(known)}" if known else "unknown key"


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        loc = [str(part) for part in problem["loc"]]
        where = ".".join(loc) or "(top level)"
        value = problem.get("input")
        if problem["type"] == "extra_forbidden":
            message = _unknown_key(loc)
        elif problem["type"] == "value_error":  # our validators' words, without pydantic's "Value error, "
            message = str(problem["ctx"]["error"])
        elif isinstance(value, (str, int, float, bool)):
            message = f"{problem['msg']}, got {value!r}"
        else:
            message = problem["msg"]
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def parse_config(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:  # every problem is in the message: pydantic's own text adds nothing
        raise ConfigError(f"{source} is not a valid experiment:\n{_describe(error)}") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """`` at line 2, column 5: expected ',' or '}', but got ':' (while parsing a flow mapping from
    line 1, column 8)``: where and what, without the file name PyYAML repeats."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return f": {error}"
    text = f" at line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None:
        text += f" ({context} from line {context_mark.line + 1}, column {context_mark.column + 1})"
    return text


def load_config(url: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment from a path or URL, apply dotted overrides, validate."""
    try:
        with fsspec.open(str(url), "r", encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError as error:
        raise ConfigError(f"config file {url} does not exist") from error
    except IsADirectoryError as error:
        raise ConfigError(f"config file {url} is a folder; pass the experiment's YAML file") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {url} is not a text file; pass the experiment's YAML file") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{url} is not valid YAML{_yaml_problem(error)}") from error
    except storage_errors() as error:
        raise ConfigError(f"config file: {storage_error_message(url, error)}") from error
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{url} must hold a mapping of sections (model, data, optim, ...), got {type(raw).__name__}")
    return parse_config(apply_overrides(raw, overrides), source=str(url))


def check_inputs(config: ExperimentConfig) -> None:
    """ConfigError naming every ``data.*_manifest`` and pretrained source file that does not exist
    or whose store cannot be read, all at once: the training workers would only find out once the
    cluster has started. (A registered model is checked when it is read.)"""
    data, pretrained = config.data, config.model.pretrained
    files = [(f"data.{key}", "manifest", getattr(data, key), "data")
             for key in ("train_manifest", "val_manifest", "test_manifest") if getattr(data, key) is not None]
    if pretrained is not None and not pretrained.registered:
        files.append(("model.pretrained.source", "checkpoint", pretrained.source, "model.pretrained"))
    problems = []
    for key, what, url, section in files:
        if section == "model.pretrained":
            options = bounded_storage_options(url, pretrained.storage_options, config.checkpoint.storage_timeout_s)
        else:
            options = data.client_options(url)
        try:
            fs, path = filesystem(url, options)
            if not fs.exists(path):
                problems.append(f"{key}: {what} {url} does not exist; check the URL and {section}.storage_options")
        except storage_errors() as error:
            problems.append(f"{key}: {storage_error_message(url, error)}")
    if problems:
        raise ConfigError("the experiment's inputs cannot be read:\n" + "\n".join(f"  {p}" for p in problems))


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """Plain JSON-able form (for saving next to the run)."""
    return config.model_dump(mode="json")


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}`` (for tracking parameters)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


__all__: list[str] = [
    "CheckpointConfig", "ClipConfig", "ConfigError", "DataConfig", "DeepSpeedConfig", "ExperimentConfig",
    "ModelConfig", "OptimConfig", "PretrainedConfig", "ScalingConfig", "TrackingConfig", "apply_overrides",
    "check_inputs", "config_to_dict", "flatten", "load_config", "parse_config",
]
