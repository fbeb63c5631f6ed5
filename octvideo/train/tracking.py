"""MLflow tracking of a training run: one MLflow run per training run, resumed by name.

Only rank 0 talks to MLflow: :func:`start_tracker` gives every other rank a :class:`NullTracker`
with the same methods, so the training loop calls the tracker unconditionally.

Metrics never raise into the training loop. They are buffered (bounded) and sent in batches;
when the tracking server is down, a warning is logged and they are sent with the next call, and
:meth:`MLflowTracker.flush` retries with backoff for a bounded time. Each metric keeps the
timestamp it was logged with, and MLflow ignores an identical metric sent twice, so a batch that
reached the server but whose reply was lost is not duplicated by the retry.

MLflow holds one value per metric and step. A worker that fails resumes from the last checkpoint
and runs again the steps it had done since (the same batches, from the same weights); the steps
that MLflow already has are not sent again, so the curves have no duplicated or missing steps.

Nothing that looks like a credential is logged: see :func:`redact`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Protocol, Sequence
from urllib.error import URLError
from urllib.request import urlopen

import yaml

from octvideo.train.config import ExperimentConfig, config_to_dict, flatten
from octvideo.train.plots import plot_training_curves
from octvideo.train.registry import Registration, register_model

log = logging.getLogger(__name__)

RUN_NAME_TAG = "octvideo.run_name"
#: Metrics kept while the server is unreachable; the oldest are dropped beyond this.
MAX_BUFFERED_METRICS = 100_000
#: Seconds a single request may take while the training loop waits on it.
REQUEST_TIMEOUT_SEC = 5
_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "session", "auth")
_SECRET_KEY = re.compile(r"(^|[_.-])(" + "|".join(_SECRET_WORDS) + r")($|[_.-])|secret|password|token", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)


class TrackingUnavailable(RuntimeError):
    """The tracking server or store cannot be reached; training must not start without it."""

    def __init__(self, uri: str, detail: str) -> None:
        super().__init__(
            f"MLflow tracking at {uri} is unavailable ({detail}); start the tracking server "
            "(mlflow server ...), or point tracking.tracking_uri / MLFLOW_TRACKING_URI at a "
            "reachable one, then submit the job again"
        )
        self.uri, self.detail = uri, detail

    def __reduce__(self) -> tuple:
        return type(self), (self.uri, self.detail)


def resolve_tracking_uri(configured: Optional[str] = None) -> str:
    """The configured URI, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_tracking_available(uri: str, timeout_sec: float = REQUEST_TIMEOUT_SEC) -> None:
    """Raise :class:`TrackingUnavailable` unless ``uri`` answers: ``GET /health`` on an HTTP
    server, opening the store otherwise."""
    if uri.startswith(("http://", "https://")):
        try:
            with urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_sec) as reply:
                if reply.status != 200:
                    raise TrackingUnavailable(uri, f"/health answered HTTP {reply.status}")
        except (URLError, OSError) as err:
            raise TrackingUnavailable(uri, str(getattr(err, "reason", err))) from None
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # any store error means the same to the user: cannot track
        raise TrackingUnavailable(uri, f"{type(err).__name__}: {err}") from None


def _looks_secret(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def _environment_secrets() -> set:
    """Values of environment variables whose names look like credentials."""
    return {v for k, v in os.environ.items() if len(v) >= 8 and _looks_secret(k.lower())}


def redact(mapping: Mapping[str, Any]) -> Dict[str, Any]:
    """A copy of a nested mapping without credentials: keys that name one (key, secret, token,
    password, session_token, ...), values containing a credential-like environment variable, and
    user info in URLs (``s3://user:pass@host`` -> ``s3://host``)."""
    env_secrets = _environment_secrets()

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items() if not _looks_secret(str(k)) and not from_environment(v)}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value if not from_environment(v)]
        if isinstance(value, str):
            return _URL_USERINFO.sub(r"\g<scheme>", value)
        return value

    def from_environment(value: Any) -> bool:
        return isinstance(value, str) and any(secret in value for secret in env_secrets)

    return clean(dict(mapping))


def config_params(config: ExperimentConfig) -> Dict[str, str]:
    """The flattened, redacted config as MLflow params, keys and values cut to MLflow's limits."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

    flat = flatten(redact(config_to_dict(config)))
    return {
        key[:MAX_ENTITY_KEY_LENGTH]: json.dumps(value)[:MAX_PARAM_VAL_LENGTH]
        if isinstance(value, (list, dict)) else str(value)[:MAX_PARAM_VAL_LENGTH]
        for key, value in flat.items()
    }


@contextmanager
def _quick_requests(timeout_sec: float) -> Iterator[None]:
    """MLflow HTTP calls without MLflow's own retries (minutes by default) and a short timeout:
    the tracker does its own retrying so that the training loop never waits long."""
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({names[0]: "0", names[1]: str(max(1, int(timeout_sec)))})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Tracker(Protocol):
    """What the training loop calls; :class:`MLflowTracker` on rank 0, :class:`NullTracker` elsewhere."""

    run_id: Optional[str]

    def log_config(self, config: ExperimentConfig) -> None: ...
    def log_model_size(self, macs: int, params: int) -> None: ...
    def log_label_map(self, label_map: Mapping[str, int]) -> None: ...
    def log_bad_videos(self, bad_videos: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_epoch_metrics(self, metrics: Mapping[str, float], epoch: int) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_training_curves(
        self, keys: Sequence[str], artifact_file: str = "plots/training_curves.png", x_label: str = "step"
    ) -> None: ...
    def register_model(self, model: Any, registered_name: str, **details: Any) -> Optional[Registration]: ...
    def flush(self, timeout_sec: float = 60.0) -> int: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """The tracker of ranks other than 0: every call does nothing."""

    run_id: Optional[str] = None

    def log_config(self, config: ExperimentConfig) -> None:
        pass

    def log_model_size(self, macs: int, params: int) -> None:
        pass

    def log_label_map(self, label_map: Mapping[str, int]) -> None:
        pass

    def log_bad_videos(self, bad_videos: Mapping[str, str]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_epoch_metrics(self, metrics: Mapping[str, float], epoch: int) -> None:
        pass

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        pass

    def log_training_curves(
        self, keys: Sequence[str], artifact_file: str = "plots/training_curves.png", x_label: str = "step"
    ) -> None:
        pass

    def register_model(self, model: Any, registered_name: str, **details: Any) -> Optional[Registration]:
        return None

    def flush(self, timeout_sec: float = 60.0) -> int:
        return 0

    def close(self, status: str = "FINISHED") -> None:
        pass


class MLflowTracker:
    """The MLflow run of training run ``run_name`` in ``experiment``, created or resumed.

    Picklable, for Ray Train's ``train_loop_config``: a copy sent to a worker logs to the same
    run with its own client (and its own copy of the metrics still queued when it was sent).

    The config and label map are sent at once and raise on failure (they are logged before
    training, right after the server was checked); metrics go through the bounded retry buffer,
    and figures that cannot be sent are skipped with a warning.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        *,
        max_buffered: int = MAX_BUFFERED_METRICS,
        request_timeout_sec: float = REQUEST_TIMEOUT_SEC,
    ) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self._timeout = request_timeout_sec
        self._pending: deque = deque(maxlen=max_buffered)
        self._dropped = 0
        self._last_step: Dict[str, int] = {}  # per metric: the highest step MLflow has
        self._failing = False
        if "'" in run_name or "\\" in run_name:
            raise ValueError(f"run name {run_name!r} must not contain quotes or backslashes")
        experiment_id = self._experiment_id(experiment)
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
            max_results=1, order_by=["attributes.start_time ASC"],
        )
        if runs:
            self.run_id = runs[0].info.run_id
            self.resumed = True
            self.client.update_run(self.run_id, status="RUNNING")
            log.info("resuming MLflow run %s (%s)", self.run_id, run_name)
        else:
            run = self.client.create_run(experiment_id, tags={RUN_NAME_TAG: run_name}, run_name=run_name)
            self.run_id = run.info.run_id
            self.resumed = False
            log.info("created MLflow run %s (%s)", self.run_id, run_name)

    @property
    def client(self) -> Any:
        """The ``MlflowClient``, made on first use (also after unpickling on a worker)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> Dict[str, Any]:
        # A copy in another process asks MLflow which steps it has (another copy may have logged).
        return {**self.__dict__, "_client": None, "_last_step": {}}

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return self.client.create_experiment(name)

    def log_config(self, config: ExperimentConfig) -> None:
        """Params (new ones only on a resumed run: MLflow forbids changing a param) and the
        redacted config as ``config.yaml``."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        params = config_params(config)
        logged = self.client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            log.warning("config changed since the run started; MLflow keeps the first values of %s", changed)
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        text = yaml.safe_dump(redact(config_to_dict(config)), sort_keys=False)
        self.client.log_text(self.run_id, text, "config.yaml")

    def log_model_size(self, macs: int, params: int) -> None:
        self.log_metrics({"model.macs": macs, "model.params": params}, 0)

    def log_label_map(self, label_map: Mapping[str, int]) -> None:
        self.client.log_dict(self.run_id, dict(label_map), "label_map.json")

    def log_bad_videos(self, bad_videos: Mapping[str, str]) -> None:
        """``bad_videos.json``: URL -> reason of every unreadable video so far; a failure is a warning."""
        try:
            with _quick_requests(self._timeout):
                self.client.log_dict(self.run_id, dict(sorted(bad_videos.items())), "bad_videos.json")
        except Exception as err:  # the list is in the job's log too
            log.warning("could not log bad_videos.json to MLflow: %s", err)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step`` and send all that are queued; never raises."""
        for key, value in metrics.items():
            if len(self._pending) == self._pending.maxlen:
                self._dropped += 1
            self._pending.append(_metric(key, value, step))
        self._send()

    def log_epoch_metrics(self, metrics: Mapping[str, float], epoch: int) -> None:
        """Like :meth:`log_metrics`, as ``epoch/<name>`` with the epoch as step."""
        self.log_metrics({f"epoch/{k}": v for k, v in metrics.items()}, epoch)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as an artifact (a PNG for ``*.png``); a failure is a warning."""
        try:
            with _quick_requests(self._timeout):
                self.client.log_figure(self.run_id, figure, artifact_file)
        except Exception as err:  # plots are not worth stopping training for
            log.warning("could not log %s to MLflow: %s", artifact_file, err)

    def log_training_curves(
        self, keys: Sequence[str], artifact_file: str = "plots/training_curves.png", x_label: str = "step"
    ) -> None:
        """One figure of the run's recorded history of each metric in ``keys`` (those it has),
        against its step (``x_label``): the whole run, across restarts, as MLflow holds it."""
        self.flush()
        curves = {}
        try:
            with _quick_requests(self._timeout):
                for key in keys:
                    history = sorted(self.client.get_metric_history(self.run_id, key), key=lambda m: (m.step, m.timestamp))
                    if history:
                        curves[key] = ([m.step for m in history], [m.value for m in history])
        except Exception as err:
            log.warning("could not read the metric history of MLflow run %s: %s", self.run_id, err)
            return
        if curves:
            self.log_figure(plot_training_curves(curves, x_label), artifact_file)

    def register_model(self, model: Any, registered_name: str, **details: Any) -> Optional[Registration]:
        """Log ``model`` to this run and register it (:func:`octvideo.train.registry.register_model`
        with ``details``); ends the MLflow run."""
        self.flush()
        return register_model(model, tracking_uri=self.tracking_uri, registered_name=registered_name,
                              run_id=self.run_id, **details)

    def flush(self, timeout_sec: float = 60.0) -> int:
        """Send what is queued, retrying with backoff for at most ``timeout_sec``; return how
        many metrics could not be sent (logged as an error, with those dropped by the bound)."""
        deadline = time.monotonic() + timeout_sec
        delay = 0.5
        while not self._send() and time.monotonic() + delay < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        lost = len(self._pending) + self._dropped
        if lost:
            log.error(
                "%d metrics could not be sent to MLflow at %s (%d still queued, %d dropped from a full "
                "buffer)", lost, self.tracking_uri, len(self._pending), self._dropped,
            )
        return lost

    def close(self, status: str = "FINISHED") -> None:
        """Flush, then mark the run ``status`` (FINISHED, FAILED or KILLED)."""
        self.flush()
        try:
            with _quick_requests(self._timeout):
                self.client.set_terminated(self.run_id, status)
        except Exception as err:
            log.warning("could not mark MLflow run %s %s: %s", self.run_id, status, err)

    def _send(self) -> bool:
        """Send queued metrics in order, batch by batch; False if some are still queued."""
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        while self._pending:
            batch = [self._pending[i] for i in range(min(len(self._pending), MAX_METRICS_PER_BATCH))]
            try:
                with _quick_requests(self._timeout):
                    new = [metric for metric in batch if metric.step > self._logged_through(metric.key)]
                    if new:
                        self.client.log_batch(self.run_id, metrics=new)
            except Exception as err:  # an outage of any kind: keep the metrics for the next call
                if not self._failing:
                    log.warning(
                        "MLflow at %s is not answering (%s); buffering metrics and retrying",
                        self.tracking_uri, err,
                    )
                self._failing = True
                return False
            for metric in new:
                self._last_step[metric.key] = max(self._last_step[metric.key], metric.step)
            for _ in batch:
                self._pending.popleft()
        if self._failing:
            log.warning("MLflow at %s answers again; buffered metrics sent", self.tracking_uri)
            self._failing = False
        return True

    def _logged_through(self, key: str) -> int:
        """The highest step of metric ``key`` in the run (-1 if none); asked once per process."""
        if key not in self._last_step:
            history = self.client.get_metric_history(self.run_id, key)
            self._last_step[key] = max((metric.step for metric in history), default=-1)
        return self._last_step[key]


def _metric(key: str, value: float, step: int) -> Any:
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), int(step))


def start_tracker(config: ExperimentConfig, rank: int, run_name: Optional[str] = None) -> Tracker:
    """Rank 0: check the tracking server (raising :class:`TrackingUnavailable`), then open the
    run named ``run_name`` (default ``checkpoint.name``). Other ranks: a :class:`NullTracker`."""
    if rank != 0:
        return NullTracker()
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    check_tracking_available(uri)
    return MLflowTracker(uri, config.tracking.experiment, run_name or config.checkpoint.name)


__all__: Sequence[str] = [
    "MLflowTracker", "NullTracker", "RUN_NAME_TAG", "Tracker", "TrackingUnavailable",
    "check_tracking_available", "config_params", "redact", "resolve_tracking_uri", "start_tracker",
]
