"""MLflow tracking of a training run: one MLflow run per training run, resumed by name.

Only rank 0 talks to MLflow: :func:`start_tracker` gives every other rank a :class:`NullTracker`
with the same methods, so the training loop calls the tracker unconditionally.

Metrics never raise into the training loop, nor make it wait on MLflow: logging one only puts it
in a bounded buffer (beyond it the oldest are dropped, and counted), and a background thread of
the tracker sends them, in order and in batches. A slow or unreachable server delays that thread
alone, not the training step, so it cannot stall the other ranks at the next collective. When the
server stops answering, a warning is logged once, metrics stay buffered and the thread retries
with backoff (0.5 s, doubling up to 10 s); another warning says when it answers again.
:meth:`MLflowTracker.flush` waits, for a bounded time, until what was logged before it was sent.
Each metric keeps the timestamp it was logged with, and MLflow ignores an identical metric sent
twice, so a batch that reached the server but whose reply was lost is not duplicated by the retry.

A process that ends without :meth:`~MLflowTracker.flush` (a crashed worker) loses the metrics it
still had buffered: those of the steps after its last checkpoint are logged again by the worker
that resumes from it; older ones, buffered only during a tracking outage, are lost.

MLflow holds one value per metric and step. A worker that fails resumes from the last checkpoint
and runs again the steps it had done since (the same batches, from the same weights); the steps
that MLflow already has are not sent again, so the curves have no duplicated or missing steps.

Besides metrics, the run page shows a description (the ``mlflow.note.content`` tag), the
manifests as dataset inputs (:mod:`octvideo.train.run_summary`) and rank 0's system metrics
(``system/...``: CPU, memory, disk, network; GPU utilisation and memory when ``pynvml`` is
installed), sampled by MLflow's monitor thread while :meth:`MLflowTracker.system_metrics` is
entered. That thread gives up for the rest of the process when a request to MLflow fails (after
MLflow's own retries); unlike the training metrics, system metrics are not buffered.

Nothing that looks like a credential is logged: see :func:`redact`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from itertools import islice
from pathlib import Path
from typing import Any, Protocol
from urllib.error import URLError
from urllib.request import urlopen

import yaml

from octvideo.train.config import ExperimentConfig, config_to_dict, flatten
from octvideo.train.model_registry import Registration, register_trained_model
from octvideo.train.plots import plot_training_curves

logger = logging.getLogger(__name__)

RUN_NAME_TAG = "octvideo.run_name"
#: Metrics kept while the server is unreachable; the oldest are dropped beyond this.
MAX_BUFFERED_METRICS = 100_000
#: Seconds a single request to MLflow may take before it counts as failed.
REQUEST_TIMEOUT_SEC = 5
#: Backoff of the metrics sender while the server does not answer: the first wait, and the longest.
_FIRST_RETRY_SEC, _MAX_RETRY_SEC = 0.5, 10.0
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


def resolve_tracking_uri(configured: str | None = None) -> str:
    """The configured URI, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_artifact_location(uri: str, configured: str | None = None) -> str | None:
    """Where a new experiment keeps its artifacts: the configured location (a local path made
    absolute), else, for a SQLite store, a ``mlartifacts`` folder beside its file, else None (the
    tracking server's choice).

    MLflow's own default for a SQLite store is ``./mlruns`` in whatever directory creates the
    experiment: for a Ray job, its working-directory copy, away from the database."""
    if configured:
        return configured if "://" in configured else Path(configured).expanduser().resolve().as_uri()
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def check_tracking_available(uri: str, timeout_sec: float = REQUEST_TIMEOUT_SEC) -> None:
    """Raise :class:`TrackingUnavailable` unless ``uri`` answers: ``GET /health`` on an HTTP
    server, opening the store otherwise."""
    if uri.startswith(("http://", "https://")):
        try:
            with urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_sec) as reply:
                if reply.status != 200:
                    raise TrackingUnavailable(uri, f"/health answered HTTP {reply.status}")
        except (URLError, OSError) as err:
            raise TrackingUnavailable(uri, str(getattr(err, "reason", err))) from err
        return
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:  # any store error means the same to the user: cannot track
        raise TrackingUnavailable(uri, f"{type(err).__name__}: {err}") from err


def _looks_secret(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def _environment_secrets() -> set:
    """Values of environment variables whose names look like credentials."""
    return {v for k, v in os.environ.items() if len(v) >= 8 and _looks_secret(k.lower())}


def redact(mapping: Mapping[str, Any]) -> dict[str, Any]:
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


def redact_url(url: str) -> str:
    """``url`` as :func:`redact` leaves it: without user info, or ``<redacted>`` when it holds a
    credential-like environment variable."""
    return redact({"url": url}).get("url", "<redacted>")


def config_params(config: ExperimentConfig) -> dict[str, str]:
    """The flattened, redacted config as MLflow params, keys and values cut to MLflow's limits."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

    flat = flatten(redact(config_to_dict(config)))
    return {
        key[:MAX_ENTITY_KEY_LENGTH]: json.dumps(value)[:MAX_PARAM_VAL_LENGTH]
        if isinstance(value, (list, dict)) else str(value)[:MAX_PARAM_VAL_LENGTH]
        for key, value in flat.items()
    }


_quick_lock = threading.Lock()
_quick_users = 0  # threads inside _quick_requests
_quick_saved: dict[str, str | None] = {}  # the settings they replaced


@contextmanager
def _quick_requests(timeout_sec: float) -> Iterator[None]:
    """MLflow HTTP calls without MLflow's own retries (minutes by default) and a short timeout:
    the tracker does its own retrying. MLflow reads both from the environment, so they hold for
    the whole process while any thread is inside: the first one in sets them, the last one out
    restores them."""
    global _quick_users
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    with _quick_lock:
        if _quick_users == 0:
            _quick_saved.update({name: os.environ.get(name) for name in names})
            os.environ.update({names[0]: "0", names[1]: str(max(1, int(timeout_sec)))})
        _quick_users += 1
    try:
        yield
    finally:
        with _quick_lock:
            _quick_users -= 1
            if _quick_users == 0:
                for name, value in _quick_saved.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value


class Tracker(Protocol):
    """What the training loop calls; :class:`MLflowTracker` on rank 0, :class:`NullTracker` elsewhere."""

    run_id: str | None
    resumed: bool  # the run existed: a re-submission of its name

    def log_config(self, config: ExperimentConfig) -> None: ...
    def log_model_size(self, macs: int, params: int) -> None: ...
    def log_label_map(self, label_map: Mapping[str, int]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_datasets(self, datasets: Mapping[str, Any]) -> None: ...
    def log_bad_videos(self, bad_videos: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_epoch_metrics(self, metrics: Mapping[str, float], epoch: int) -> None: ...
    def log_figure(self, figure: Any, artifact_file: str) -> None: ...
    def log_training_curves(
        self, keys: Sequence[str], artifact_file: str = "plots/training_curves.png", x_label: str = "step"
    ) -> None: ...
    def register_trained_model(self, model: Any, registered_name: str, **details: Any) -> Registration | None: ...
    def system_metrics(self) -> AbstractContextManager[None]: ...
    def flush(self, timeout_sec: float = 60.0) -> int: ...
    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """The tracker of ranks other than 0: every call does nothing."""

    run_id: str | None = None
    resumed = False

    def log_config(self, config: ExperimentConfig) -> None:
        pass

    def log_model_size(self, macs: int, params: int) -> None:
        pass

    def log_label_map(self, label_map: Mapping[str, int]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_datasets(self, datasets: Mapping[str, Any]) -> None:
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

    def register_trained_model(self, model: Any, registered_name: str, **details: Any) -> Registration | None:
        return None

    def system_metrics(self) -> AbstractContextManager[None]:
        return nullcontext()

    def flush(self, timeout_sec: float = 60.0) -> int:
        return 0

    def close(self, status: str = "FINISHED") -> None:
        pass


class MLflowTracker:
    """The MLflow run of training run ``run_name`` in ``experiment``, created or resumed.

    Picklable, for Ray Train's ``train_loop_config``: a copy sent to a worker logs to the same
    run with its own client and sender thread (and its own copy of the metrics still queued when
    it was sent).

    The config, label map, dataset inputs and tags are sent at once and raise on failure (they are
    logged before training, right after the server was checked); metrics go through the bounded
    buffer and the sender thread, and figures that cannot be sent are skipped with a warning.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        *,
        artifact_location: str | None = None,
        max_buffered: int = MAX_BUFFERED_METRICS,
        request_timeout_sec: float = REQUEST_TIMEOUT_SEC,
        system_metrics_every_s: float | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.system_metrics_every_s = system_metrics_every_s  # None: no system metrics
        self._client: Any = None
        self._timeout = request_timeout_sec
        self._pending: deque = deque(maxlen=max_buffered)
        self._queued = 0  # metrics ever queued: those before the first of _pending left the buffer
        self._dropped = 0
        self._retry_now = False  # a flush asks the sender not to wait out its backoff
        self._changed = threading.Condition()  # guards the four above; never held during a request
        self._sender: threading.Thread | None = None  # started on first use in the process
        self._last_step: dict[str, int] = {}  # sender thread only; per metric: the highest step MLflow has
        self._failing = False  # sender thread only
        if "'" in run_name or "\\" in run_name:
            raise ValueError(f"run name {run_name!r} must not contain quotes or backslashes")
        experiment_id = self._experiment_id(experiment, artifact_location)
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
            max_results=1, order_by=["attributes.start_time ASC"],
        )
        if runs:
            self.run_id = runs[0].info.run_id
            self.resumed = True
            self.client.update_run(self.run_id, status="RUNNING")
            logger.info("resuming MLflow run %s (%s)", self.run_id, run_name)
        else:
            run = self.client.create_run(experiment_id, tags={RUN_NAME_TAG: run_name}, run_name=run_name)
            self.run_id = run.info.run_id
            self.resumed = False
            logger.info("created MLflow run %s (%s)", self.run_id, run_name)

    @property
    def client(self) -> Any:
        """The ``MlflowClient``, made on first use (also after unpickling on a worker)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        # A copy in another process asks MLflow which steps it has (another copy may have logged),
        # and makes its own client and sender thread.
        with self._changed:
            return {
                **self.__dict__, "_pending": self._pending.copy(), "_client": None, "_last_step": {},
                "_changed": None, "_sender": None,
            }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _changed=threading.Condition())

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        """The experiment named ``name``; a new one keeps its artifacts where
        :func:`resolve_artifact_location` says, an existing one where it always did."""
        experiment = self.client.get_experiment_by_name(name)
        location = resolve_artifact_location(self.tracking_uri, artifact_location)
        if experiment is None:
            return self.client.create_experiment(name, artifact_location=location)
        if artifact_location and experiment.artifact_location.rstrip("/") != location.rstrip("/"):
            logger.warning(
                "MLflow experiment %r keeps its artifacts in %s, set when it was created; "
                "tracking.artifact_location %s applies to new experiments only",
                name, experiment.artifact_location, location,
            )
        return experiment.experiment_id

    def log_config(self, config: ExperimentConfig) -> None:
        """Params (new ones only on a resumed run: MLflow forbids changing a param) and the
        redacted config as ``config.yaml``."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        params = config_params(config)
        logged = self.client.get_run(self.run_id).data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            logger.warning("config changed since the run started; MLflow keeps the first values of %s", changed)
        new = [Param(k, v) for k, v in params.items() if k not in logged]
        for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        text = yaml.safe_dump(redact(config_to_dict(config)), sort_keys=False)
        self.client.log_text(self.run_id, text, "config.yaml")

    def log_model_size(self, macs: int, params: int) -> None:
        self.log_metrics({"model.macs": macs, "model.params": params}, 0)

    def log_label_map(self, label_map: Mapping[str, int]) -> None:
        self.client.log_dict(self.run_id, dict(label_map), "label_map.json")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_datasets(self, datasets: Mapping[str, Any]) -> None:
        """Log ``mlflow.data`` datasets as the run's inputs, each with its context ("training",
        "validation", "test"): the key. MLflow keeps one input per dataset name and digest, so a
        resumed run logging the same ones again adds nothing."""
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [
            DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
            for context, dataset in datasets.items()
        ]
        self.client.log_inputs(self.run_id, datasets=inputs)

    @contextmanager
    def system_metrics(self) -> Iterator[None]:
        """Sample the system metrics of this process's machine into the run while inside, every
        ``system_metrics_every_s`` seconds (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides
        it), from the step after the run's last sample on; on the way out, the monitor stops and
        sends what it holds (short requests, no retries: it cannot hold up the end of training).
        A monitor that cannot start is a warning."""
        monitor = self._start_system_metrics() if self.system_metrics_every_s is not None else None
        try:
            yield
        finally:
            if monitor is not None:
                with _quick_requests(self._timeout):
                    monitor.finish()

    def _start_system_metrics(self) -> Any:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        try:
            with _quick_requests(self._timeout):
                monitor = SystemMetricsMonitor(
                    self.run_id, sampling_interval=self.system_metrics_every_s, resume_logging=True,
                    tracking_uri=self.tracking_uri,
                )
        except Exception as err:  # system metrics are not worth stopping training for
            logger.warning("no system metrics for MLflow run %s: %s", self.run_id, err)
            return None
        monitor.start()
        return monitor

    def log_bad_videos(self, bad_videos: Mapping[str, str]) -> None:
        """``bad_videos.json``: URL -> reason of every unreadable video so far; a failure is a warning."""
        try:
            with _quick_requests(self._timeout):
                self.client.log_dict(self.run_id, dict(sorted(bad_videos.items())), "bad_videos.json")
        except Exception as err:  # the list is in the job's log too
            logger.warning("could not log bad_videos.json to MLflow: %s", err)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step`` for the sender thread; never waits on MLflow."""
        new = [_metric(key, value, step) for key, value in metrics.items()]
        with self._changed:
            self._dropped += max(0, len(self._pending) + len(new) - self._pending.maxlen)
            self._pending.extend(new)
            self._queued += len(new)
            self._wake_sender()

    def log_epoch_metrics(self, metrics: Mapping[str, float], epoch: int) -> None:
        """Like :meth:`log_metrics`, as ``epoch/<name>`` with the epoch as step."""
        self.log_metrics({f"epoch/{k}": v for k, v in metrics.items()}, epoch)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Save a matplotlib figure as an artifact (a PNG for ``*.png``); a failure is a warning."""
        try:
            with _quick_requests(self._timeout):
                self.client.log_figure(self.run_id, figure, artifact_file)
        except Exception as err:  # plots are not worth stopping training for
            logger.warning("could not log %s to MLflow: %s", artifact_file, err)

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
            logger.warning("could not read the metric history of MLflow run %s: %s", self.run_id, err)
            return
        if curves:
            self.log_figure(plot_training_curves(curves, x_label), artifact_file)

    def register_trained_model(self, model: Any, registered_name: str, **details: Any) -> Registration | None:
        """Log ``model`` to this run and register it in the MLflow Model Registry
        (:func:`octvideo.train.model_registry.register_trained_model` with ``details``); ends the MLflow run."""
        self.flush()
        return register_trained_model(
            model, tracking_uri=self.tracking_uri, registered_name=registered_name, run_id=self.run_id, **details
        )

    def flush(self, timeout_sec: float = 60.0) -> int:
        """Wait at most ``timeout_sec`` until the metrics queued so far were sent (the sender tries
        again at once, then with backoff); return how many could not be sent (logged as an
        error, with those dropped by the bound)."""
        with self._changed:
            queued = self._queued
            if self._pending:
                self._retry_now = True
                self._wake_sender()
                self._changed.wait_for(lambda: self._queued - len(self._pending) >= queued, timeout_sec)
            waiting, dropped = len(self._pending), self._dropped
        lost = waiting + dropped
        if lost:
            logger.error(
                "%d metrics could not be sent to MLflow at %s (%d still queued, %d dropped from a full "
                "buffer)", lost, self.tracking_uri, waiting, dropped,
            )
        return lost

    def close(self, status: str = "FINISHED") -> None:
        """Flush, then mark the run ``status`` (FINISHED, FAILED or KILLED)."""
        self.flush()
        try:
            with _quick_requests(self._timeout):
                self.client.set_terminated(self.run_id, status)
        except Exception as err:
            logger.warning("could not mark MLflow run %s %s: %s", self.run_id, status, err)

    def _wake_sender(self) -> None:
        """Wake the sender thread, started here on first use in this process; the lock is held."""
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_forever, name="mlflow-metrics", daemon=True)
            self._sender.start()
        self._changed.notify_all()

    def _send_forever(self) -> None:
        """The sender thread: send what is queued; after a failed attempt, wait with backoff before
        the next one, unless a flush asks for it now."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)  # its own: MlflowClient is not documented thread-safe
        delay = _FIRST_RETRY_SEC
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending)
                self._retry_now = False
            if self._send(client):
                delay = _FIRST_RETRY_SEC
                continue
            with self._changed:
                hurried = self._changed.wait_for(lambda: self._retry_now, delay)
            delay = _FIRST_RETRY_SEC if hurried else min(2 * delay, _MAX_RETRY_SEC)

    def _send(self, client: Any) -> bool:
        """Send queued metrics in order, batch by batch; False if the server did not answer."""
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        while True:
            with self._changed:
                first = self._queued - len(self._pending)  # the number of the batch's first metric
                batch = list(islice(self._pending, MAX_METRICS_PER_BATCH))
            if not batch:
                return True
            try:
                with _quick_requests(self._timeout):
                    new = self._unlogged(batch, client)
                    if new:
                        client.log_batch(self.run_id, metrics=new)
            except Exception as err:  # an outage of any kind: keep the metrics for the next attempt
                if not self._failing:
                    logger.warning(
                        "MLflow at %s is not answering (%s); buffering metrics and retrying",
                        self.tracking_uri, err,
                    )
                self._failing = True
                return False
            if self._failing:
                logger.warning("MLflow at %s answers again; sending the buffered metrics", self.tracking_uri)
                self._failing = False
            for metric in new:
                self._last_step[metric.key] = max(self._last_step[metric.key], metric.step)
            with self._changed:
                # A full buffer may have dropped the oldest of the batch meanwhile: sent after all.
                dropped_sent = min(self._queued - len(self._pending), first + len(batch)) - first
                self._dropped -= dropped_sent
                for _ in range(len(batch) - dropped_sent):
                    self._pending.popleft()
                self._changed.notify_all()  # for flush

    def _unlogged(self, batch: Sequence[Any], client: Any) -> list:
        """The metrics of ``batch`` whose step MLflow does not have yet (the first one of each step)."""
        through: dict[str, int] = {}
        new = []
        for metric in batch:
            if metric.key not in through:
                through[metric.key] = self._logged_through(metric.key, client)
            if metric.step > through[metric.key]:
                new.append(metric)
                through[metric.key] = metric.step
        return new

    def _logged_through(self, key: str, client: Any) -> int:
        """The highest step of metric ``key`` in the run (-1 if none); asked once per process."""
        if key not in self._last_step:
            history = client.get_metric_history(self.run_id, key)
            self._last_step[key] = max((metric.step for metric in history), default=-1)
        return self._last_step[key]


def _metric(key: str, value: float, step: int) -> Any:
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), int(step))


def start_tracker(config: ExperimentConfig, rank: int, run_name: str | None = None) -> Tracker:
    """Rank 0: check the tracking server (raising :class:`TrackingUnavailable`), then open the
    run named ``run_name`` (default ``checkpoint.name``). Other ranks: a :class:`NullTracker`."""
    if rank != 0:
        return NullTracker()
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    check_tracking_available(uri)
    return MLflowTracker(
        uri, config.tracking.experiment, run_name or config.checkpoint.name,
        artifact_location=config.tracking.artifact_location,
        system_metrics_every_s=config.tracking.system_metrics_every_s,
    )


__all__: Sequence[str] = [
    "MLflowTracker", "NullTracker", "RUN_NAME_TAG", "Tracker", "TrackingUnavailable",
    "check_tracking_available", "config_params", "redact", "redact_url", "resolve_artifact_location",
    "resolve_tracking_uri", "start_tracker",
]
