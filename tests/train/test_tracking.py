"""MLflow tracking and the Model Registry against real stores: SQLite files and an ``mlflow server``
process that is killed and restarted mid-run."""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from octvideo.data import load_manifest
from octvideo.models import build_model
from octvideo.train.config import ClipConfig, parse_config
from octvideo.train.evaluate import confusion_matrix
from octvideo.train.model_registry import CANDIDATE, CHAMPION, register_trained_model
from octvideo.train.plots import plot_confusion_matrix, plot_per_class_accuracy, plot_training_curves
from octvideo.train.run_summary import DESCRIPTION_TAG, manifest_dataset
from octvideo.train.tracking import (
    MLflowTracker,
    NullTracker,
    TrackingUnavailable,
    check_tracking_available,
    resolve_tracking_uri,
    start_tracker,
)
from tests.conftest import free_port
from tests.faults.proxy import FaultyProxy

FAKE_SECRET = "fake-Secret-7f3a9c"
FAKE_ENV_SECRET = "fake-env-credential-51b2"


def config(tmp_path: Path, uri: str, **storage_options):
    return parse_config({
        "model": {"name": "oct_i3d_r18", "width": 8},
        "data": {
            "train_manifest": "s3://k/train.csv", "val_manifest": "s3://k/val.csv", "storage_options": storage_options,
        },
        "tracking": {"tracking_uri": uri, "experiment": "exp"},
        "checkpoint": {"name": "run-a", "storage_path": str(tmp_path / "runs")},
    })


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)  # whatever MLflow writes beside the working directory stays in tmp_path
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_tracking_uri_from_config_then_environment_then_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert resolve_tracking_uri(None) == "http://tracking:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"


def test_a_sqlite_store_keeps_artifacts_beside_its_file_or_where_configured(tmp_path, monkeypatch, caplog):
    elsewhere = tmp_path / "job-working-dir"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # MLflow's own default would be ./mlruns here
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    (tmp_path / "store").mkdir()

    tracker = MLflowTracker(uri, "exp", "run-a")
    tracker.client.log_text(tracker.run_id, "a", "a.txt")
    assert [p.name for p in (tmp_path / "store" / "mlartifacts").rglob("a.txt")] == ["a.txt"]
    assert not (elsewhere / "mlruns").exists()

    configured = tmp_path / "artifacts"
    tracker = MLflowTracker(uri, "exp-b", "run-b", artifact_location=str(configured))
    tracker.client.log_text(tracker.run_id, "b", "b.txt")
    assert [p.name for p in configured.rglob("b.txt")] == ["b.txt"]

    # An existing experiment keeps its location; a different configured one is reported, not used.
    with caplog.at_level(logging.WARNING, logger="octvideo.train.tracking"):
        tracker = MLflowTracker(uri, "exp", "run-c", artifact_location=str(tmp_path / "other"))
    assert "applies to new experiments only" in caplog.text
    tracker.client.log_text(tracker.run_id, "c", "c.txt")
    assert [p.name for p in (tmp_path / "store" / "mlartifacts").rglob("c.txt")] == ["c.txt"]
    assert not (tmp_path / "other").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="octvideo.train.tracking"):
        MLflowTracker(uri, "exp-b", "run-d", artifact_location=str(configured))  # as created: nothing to report
    assert "applies to new experiments only" not in caplog.text


def test_unreachable_server_refuses_to_start(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingUnavailable, match=r"127\.0\.0\.1.*start the tracking server"):
        check_tracking_available(uri, timeout_sec=2)
    with pytest.raises(TrackingUnavailable):
        start_tracker(config(tmp_path, uri), rank=0)
    assert isinstance(start_tracker(config(tmp_path, uri), rank=1), NullTracker)  # other ranks never connect


def test_run_resumed_by_name_logs_everything_but_secrets(tmp_path, sqlite_uri, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", FAKE_ENV_SECRET)
    cfg = config(
        tmp_path, sqlite_uri, key=FAKE_SECRET, secret=FAKE_SECRET, session_token=FAKE_SECRET,
        password=FAKE_SECRET, profile=FAKE_ENV_SECRET, anon=False,
        client_kwargs={"endpoint_url": f"http://user:{FAKE_SECRET}@s3.local:9000", "region_name": "eu-west-1"},
    )
    tracker = start_tracker(cfg, rank=0)
    tracker.log_config(cfg)
    tracker.log_model_size(macs=123456, params=789)
    tracker.log_label_map({"a": 0, "b": 1})
    for step in range(3):
        tracker.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.1}, step)
    tracker.log_epoch_metrics({"top1": 0.5}, epoch=0)
    figure = plot_training_curves({"loss": ([0, 1, 2], [1.0, 0.5, 0.33]), "lr": ([0, 1, 2], [0.1] * 3)})
    tracker.log_figure(figure, "plots/curves.png")
    matrix = confusion_matrix([0, 1, 1], [0, 1, 0], 2)
    tracker.log_figure(plot_confusion_matrix(matrix, ["a", "b"]), "plots/confusion.png")
    tracker.close()

    again = start_tracker(cfg, rank=0)  # the restart path: same name, same run
    assert isinstance(again, MLflowTracker) and again.resumed and again.run_id == tracker.run_id
    again.log_config(cfg)  # logging the same config again is fine
    on_worker = pickle.loads(pickle.dumps(again))  # as Ray Train ships it in train_loop_config
    on_worker.log_metrics({"loss": 0.2}, 3)
    on_worker.close()
    other = MLflowTracker(sqlite_uri, "exp", "run-b")
    assert not other.resumed and other.run_id != tracker.run_id

    client = MlflowClient(sqlite_uri)
    run = client.get_run(tracker.run_id)
    params = run.data.params
    assert params["model.name"] == "oct_i3d_r18" and params["data.storage_options.anon"] == "False"
    assert params["data.storage_options.client_kwargs.region_name"] == "eu-west-1"
    assert params["data.storage_options.client_kwargs.endpoint_url"] == "http://s3.local:9000"
    assert not any(k.endswith((".key", ".secret", ".password", ".session_token", ".profile")) for k in params)
    assert run.data.metrics["model.macs"] == 123456 and run.data.metrics["model.params"] == 789
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [0, 1, 2, 3]
    assert client.get_metric_history(tracker.run_id, "epoch/top1")[0].value == 0.5
    assert run.info.status == "FINISHED"

    artifacts = Path(client.download_artifacts(tracker.run_id, "", str(tmp_path / "download")))
    files = {p.relative_to(artifacts).as_posix(): p.read_bytes() for p in artifacts.rglob("*") if p.is_file()}
    assert {"config.yaml", "label_map.json", "plots/curves.png", "plots/confusion.png"} <= set(files)
    assert files["plots/curves.png"].startswith(b"\x89PNG")
    assert b"oct_i3d_r18" in files["config.yaml"]
    everything = [*params.items(), *run.data.tags.items()]
    text = "\n".join(f"{k}={v}" for k, v in everything).encode() + b"".join(files.values())
    for secret in (FAKE_SECRET, FAKE_ENV_SECRET):
        assert secret.encode() not in text


def test_run_page_describes_the_run_and_lists_its_manifests(tmp_path, sqlite_uri):
    """prepare_job gives the MLflow run a description and the three manifests as dataset inputs
    (source, digest, size), without credentials; a re-submission says it resumed and logs no
    input twice."""
    from octvideo.train.job import prepare_job

    data = tmp_path / "data"
    data.mkdir()
    sizes = {"train": 6, "val": 3, "test": 4}
    for split, size in sizes.items():  # 'path label' lists: reading them opens no video
        (data / f"{split}.txt").write_text("".join(f"{split}/v{i}.mp4 {i % 3}\n" for i in range(size)))
    cfg = parse_config({
        "model": {"name": "oct_i3d_r18", "alpha": 0.5, "width": 8},
        "data": {**{f"{split}_manifest": str(data / f"{split}.txt") for split in sizes},
                 "storage_options": {"key": FAKE_SECRET}},
        "deepspeed": {"precision": "fp32"},
        "scaling": {"num_workers": 3},
        "tracking": {"tracking_uri": sqlite_uri, "experiment": "page"},
        "checkpoint": {"name": "described", "storage_path": str(tmp_path / "runs")},
    })
    client = MlflowClient(sqlite_uri)

    def run_page(run_id):
        run = client.get_run(run_id)
        inputs = {
            {tag.key: tag.value for tag in item.tags}["mlflow.data.context"]: item.dataset
            for item in run.inputs.dataset_inputs
        }
        return run.data.tags[DESCRIPTION_TAG], inputs, len(run.inputs.dataset_inputs)

    first = prepare_job(cfg)
    description, inputs, count = run_page(first.tracker.run_id)
    for words in ("oct_i3d_r18", "alpha 0.5", str(data / "train.txt"), "6 videos", "fp32", "3 workers"):
        assert words in description, (words, description)
    assert "Resumed" not in description
    assert count == 3 and set(inputs) == {"training", "validation", "test"}
    for context, split in (("training", "train"), ("validation", "val"), ("test", "test")):
        dataset = inputs[context]
        assert json.loads(dataset.source) == {"uri": str(data / f"{split}.txt")} and dataset.source_type == "local"
        assert dataset.name == f"{split}.txt" and len(dataset.digest) == 10
        assert json.loads(dataset.profile) == {"num_videos": sizes[split], "num_classes": 3, "missing_videos": 0}

    again = prepare_job(cfg)  # the same name submitted again
    assert again.tracker.run_id == first.tracker.run_id
    description, inputs, count = run_page(first.tracker.run_id)
    assert "Resumed" in description and str(tmp_path / "runs" / "described") in description
    assert count == 3  # the same manifests: the same inputs

    text = description + "".join(d.source + d.name for d in inputs.values())
    on_s3 = manifest_dataset(f"s3://user:{FAKE_SECRET}@host/k/train.txt", load_manifest(str(data / "train.txt")))
    text += on_s3.to_json()
    assert json.loads(on_s3.source.to_json()) == {"uri": "s3://host/k/train.txt"}
    assert FAKE_SECRET not in text


def test_system_metrics_are_sampled_into_the_run_while_training(sqlite_uri):
    """The monitor runs in the process that enters ``system_metrics`` (a worker's copy of the
    tracker), stops on the way out, and a later one goes on from the next step."""
    tracker = pickle.loads(pickle.dumps(MLflowTracker(sqlite_uri, "exp", "system", system_metrics_every_s=0.2)))
    client = MlflowClient(sqlite_uri)

    def sampled() -> dict:
        return {k: v for k, v in client.get_run(tracker.run_id).data.metrics.items() if k.startswith("system/")}

    for _ in range(2):  # as after a restart
        with tracker.system_metrics():
            deadline = time.monotonic() + 30
            while len(client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")) < 2:
                assert time.monotonic() < deadline, "no system metrics within 30 s"
                time.sleep(0.2)
            time.sleep(0.5)
        assert not any(t.name == "SystemMetricsMonitor" for t in threading.enumerate())
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(sampled())
    steps = [m.step for m in client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")]
    assert len(steps) >= 4 and sorted(steps) == list(range(len(steps)))  # no step twice, none skipped
    with NullTracker().system_metrics():
        pass


def test_plots_from_plain_arrays():
    matrix = confusion_matrix([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    for figure in (plot_confusion_matrix(matrix, ["a", "b", "c"]), plot_per_class_accuracy(matrix, ["a", "b", "c"])):
        assert len(figure.axes) >= 1
    with pytest.raises(ValueError, match="2 x values but 1 y values"):
        plot_training_curves({"loss": ([0, 1], [1.0])})


def _start_server(store: Path, port: int, cwd: Path) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=cwd, stdout=open(cwd / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + 180  # a minute and more on a busy 2-core machine
    while time.monotonic() < deadline:
        try:
            urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.2)
    _stop(process)
    raise RuntimeError(f"mlflow server did not start; see {cwd / 'server.log'}")


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)  # the server and its uvicorn worker, as a crash would
    process.wait(timeout=10)


def test_metrics_survive_a_server_outage(tmp_path, caplog):
    store, port = tmp_path / "server.db", free_port()
    uri = f"http://127.0.0.1:{port}"
    MlflowClient(f"sqlite:///{store}").search_experiments()  # create the tables here: the server starts faster
    server = _start_server(store, port, tmp_path)
    try:
        check_tracking_available(uri)
        tracker = MLflowTracker(uri, "exp", "outage", request_timeout_sec=2)
        for step in range(5):
            tracker.log_metrics({"loss": 10.0 - step}, step)
        assert tracker.flush() == 0
        _stop(server)
        with caplog.at_level(logging.WARNING, logger="octvideo.train.tracking"):
            for step in range(5, 10):
                tracker.log_metrics({"loss": 10.0 - step}, step)  # must not raise
            assert tracker.flush(timeout_sec=1) == 5  # bounded: gives up and reports what is left
        assert "not answering" in caplog.text
        server = _start_server(store, port, tmp_path)
        for step in range(10, 15):
            tracker.log_metrics({"loss": 10.0 - step}, step)
        assert tracker.flush(timeout_sec=10) == 0
        history = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
        assert [m.step for m in history] == list(range(15))
        assert [m.value for m in history] == [10.0 - s for s in range(15)]
    finally:
        _stop(server)


def test_log_metrics_does_not_wait_on_a_server_that_hangs(tmp_path, caplog):
    """A server that takes requests but does not answer holds up the sender thread, not the
    training step; flush waits no longer than it is told, and once the server answers again
    every step arrives once."""
    store, port = tmp_path / "server.db", free_port()
    MlflowClient(f"sqlite:///{store}").search_experiments()
    server = _start_server(store, port, tmp_path)
    proxy = FaultyProxy(port)
    try:
        tracker = MLflowTracker(proxy.url, "exp", "hang", request_timeout_sec=3)
        tracker.log_metrics({"loss": 0.0}, 0)
        assert tracker.flush(timeout_sec=10) == 0
        proxy.freeze_on(rb"POST /api/2\.0/mlflow/runs/log-batch")  # no traffic from the next batch on
        with caplog.at_level(logging.WARNING, logger="octvideo.train.tracking"):
            seconds = []
            for step in range(1, 21):  # 4 s of training: a request times out meanwhile
                started = time.monotonic()
                tracker.log_metrics({"loss": float(step)}, step)
                seconds.append(time.monotonic() - started)
                time.sleep(0.2)
            assert proxy.frozen.is_set() and max(seconds) < 0.5  # the request timeout is 3 s
            started = time.monotonic()
            assert tracker.flush(timeout_sec=1) == 20
            assert time.monotonic() - started < 2
            assert "not answering" in caplog.text
            proxy.thaw()
            assert tracker.flush(timeout_sec=30) == 0
        assert "answers again" in caplog.text
        history = MlflowClient(proxy.url).get_metric_history(tracker.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(21)]
    finally:
        proxy.close()
        _stop(server)


def test_flush_waits_until_everything_logged_before_is_in_mlflow(sqlite_uri):
    """Sent in several batches, every step is in MLflow once after flush, with its first value
    (steps logged again, as after a resume, are not sent again)."""
    tracker = MLflowTracker(sqlite_uri, "exp", "batches")
    steps = 1200  # 2400 metrics, and 200 logged again: batches of at most 1000
    for step in range(steps):
        tracker.log_metrics({"loss": 1.0 / (step + 1), "global_step": step}, step)
    for step in range(steps - 100, steps):
        tracker.log_metrics({"loss": -1.0, "global_step": step}, step)
    assert tracker.flush() == 0
    client = MlflowClient(sqlite_uri)
    for key, values in (("loss", [1.0 / (s + 1) for s in range(steps)]), ("global_step", list(range(steps)))):
        history = sorted(client.get_metric_history(tracker.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(steps))
        assert [m.value for m in history] == values


def test_a_tracker_pickled_while_its_thread_runs_logs_to_the_same_run(sqlite_uri):
    """As Ray ships the driver's tracker to the workers: the copy logs with a thread of its own."""
    tracker = MLflowTracker(sqlite_uri, "exp", "pickled")
    threads = threading.active_count()
    for step in range(3):
        tracker.log_metrics({"loss": float(step)}, step)
    assert threading.active_count() == threads + 1  # the sender, started by the first call
    copy = pickle.loads(pickle.dumps(tracker))  # maybe while the thread sends: the copy has them queued
    assert tracker.flush() == 0
    for step in range(3, 6):
        copy.log_metrics({"loss": float(step)}, step)
    assert threading.active_count() == threads + 2
    assert copy.flush() == 0 and copy.run_id == tracker.run_id
    history = MlflowClient(sqlite_uri).get_metric_history(tracker.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(6)]


def test_a_resumed_worker_does_not_log_a_step_twice(sqlite_uri):
    """A worker resumed from a checkpoint at step 3, after the failed one had logged up to step 5,
    sends steps 4-5 again: MLflow keeps one value per step, the first; steps 6-8 follow."""
    failed = MLflowTracker(sqlite_uri, "exp", "resumed")
    resumed = pickle.loads(pickle.dumps(failed))  # as Ray sends it to the new worker
    for step in range(1, 6):
        failed.log_metrics({"loss": float(step), "global_step": step}, step)
    assert failed.flush() == 0
    for step in range(4, 9):
        resumed.log_metrics({"loss": step + 0.5, "global_step": step}, step)
    resumed.log_epoch_metrics({"val_top1": 0.5}, 1)
    resumed.log_epoch_metrics({"val_top1": 0.6}, 1)  # the same epoch's report after another restart
    assert resumed.flush() == 0
    client = MlflowClient(sqlite_uri)
    history = sorted(client.get_metric_history(failed.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, 9))
    assert [m.value for m in history] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.5, 7.5, 8.5]
    assert [m.value for m in client.get_metric_history(failed.run_id, "epoch/val_top1")] == [0.5]


def test_registry_aliases_follow_test_top1(sqlite_uri):
    client = MlflowClient(sqlite_uri)
    run_id = client.create_run(client.create_experiment("reg")).info.run_id
    clip = ClipConfig(
        num_frames=4, sampling_rate=2, train_short_side=(32, 40), crop=32, eval_short_side=32, eval_crop=32
    )

    def register(top1: float, step: int):
        model = build_model("oct_i3d_r18", width=8, num_classes=4)
        return register_trained_model(
            model, tracking_uri=sqlite_uri, registered_name="toy", run_id=run_id,
            build_kwargs={"width": 8, "num_classes": 4}, label_map=dict(zip("abcd", range(4))), clip=clip,
            test_top1=top1, global_step=step,
        )

    first = register(0.5, 10)
    assert first.version == "1" and first.aliases == [CANDIDATE, CHAMPION] and first.previous_champion is None
    worse = register(0.3, 20)
    assert worse.aliases == [CANDIDATE] and (worse.previous_champion, worse.previous_champion_top1) == ("1", 0.5)
    assert str(client.get_model_version_by_alias("toy", CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias("toy", CANDIDATE).version) == "2"
    better = register(0.7, 30)
    assert better.promoted and (better.previous_champion, better.previous_champion_top1) == ("1", 0.5)
    assert str(client.get_model_version_by_alias("toy", CHAMPION).version) == "3"
    again = register(0.7, 30)  # the same run at the same step: a finished run submitted again
    assert (again.version, sorted(again.aliases)) == ("3", [CANDIDATE, CHAMPION])
    assert len(client.search_model_versions("name = 'toy'")) == 3
    assert np.isclose(client.get_run(run_id).data.metrics["test/top1"], 0.7)
