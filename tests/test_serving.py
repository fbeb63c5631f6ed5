"""A registered model as MLflow serves it: registration logs no pickle (and MLflow warns of none),
``mlflow.pyfunc`` loads it with pickle deserialisation switched off, and ``mlflow models serve``
answers a real HTTP request with the top-k classes of the label map."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import Request, urlopen

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from octvideo.data.device import model_input
from octvideo.models import build_model
from octvideo.predict import load_registered_model
from octvideo.serving.classifier import EXAMPLE_SIZE, TOP_K
from octvideo.serving.model_files import FILES
from octvideo.train.config import ClipConfig
from octvideo.train.model_registry import model_metadata, register_trained_model
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"archery": 0, "bowling": 1, "cooking": 2, "dancing": 3, "eating": 4, "fencing": 5}
OPTIONS = {"alpha": 0.5, "width": 8, "num_classes": len(LABELS)}
CLIP = ClipConfig(num_frames=4, sampling_rate=4, train_short_side=(32, 40), crop=32, eval_short_side=32, eval_crop=32)


@dataclass
class Store:
    """A SQLite MLflow store holding ``models:/tiny@champion``, what registering it logged, and the network."""

    uri: str
    logged: _Records
    model: torch.nn.Module


class _Records(logging.Handler):
    """The records of MLflow's loggers (they do not propagate to pytest's caplog) and the warnings, while in."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.warnings: list[warnings.WarningMessage] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> _Records:
        logging.getLogger("mlflow").addHandler(self)
        self._catch = warnings.catch_warnings(record=True)
        self.warnings = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)
        logging.getLogger("mlflow").removeHandler(self)

    def mentioning_pickle(self) -> list[str]:
        messages = [r.getMessage() for r in self.records] + [str(w.message) for w in self.warnings]
        return [message for message in messages if "pickle" in message.lower()]


def _tiny_store(folder: Path) -> tuple[str, str]:
    """A fresh SQLite store's URI and a run in it."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client.create_run(client.create_experiment("serving", artifact_location=(folder / "a").as_uri())).info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    uri, run_id = _tiny_store(tmp_path_factory.mktemp("serving"))
    model = build_model("oct_i3d_r18", **OPTIONS)
    with _Records() as logged:
        register_trained_model(model, tracking_uri=uri, registered_name="tiny", run_id=run_id, build_kwargs=OPTIONS,
                               label_map=LABELS, clip=CLIP, test_top1=0.3, global_step=1)
    return Store(uri, logged, model)


@pytest.fixture
def local_model(store: Store, tmp_path: Path) -> Path:
    """The registered model's files, downloaded."""
    mlflow.set_tracking_uri(store.uri)
    return Path(mlflow.artifacts.download_artifacts("models:/tiny@champion", dst_path=str(tmp_path)))


def test_registration_warns_of_no_pickle_and_logs_none(store: Store, local_model: Path) -> None:
    assert not [r.getMessage() for r in store.logged.records if r.levelno >= logging.WARNING]
    assert not store.logged.mentioning_pickle()
    files = {path.relative_to(local_model).as_posix() for path in local_model.rglob("*") if path.is_file()}
    assert {f"artifacts/{name}" for name in FILES.values()} <= files and "classifier_code.py" in files
    assert not [name for name in files if name.endswith((".pkl", ".pickle")) or "python_model" in name]
    for name in files - {"artifacts/weights.pt"}:  # all else is text: JSON, YAML, the 9-line code file
        (local_model / name).read_text(encoding="utf-8")
    pyfunc = Model.load(str(local_model)).flavors["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc
    weights = torch.load(local_model / "artifacts/weights.pt", weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in store.model.state_dict().items())
    assert json.loads((local_model / "artifacts/labels.json").read_text()) == LABELS


def test_pyfunc_loads_without_pickle_and_names_the_top_classes(store: Store, local_model: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # a cloudpickled python_model would not load
    loaded = mlflow.pyfunc.load_model("models:/tiny@champion")
    example = Model.load(str(local_model)).load_input_example(str(local_model))
    assert example.dtype == np.uint8 and example.shape == (1, CLIP.num_frames, EXAMPLE_SIZE, EXAMPLE_SIZE, 3)
    spec = loaded.metadata.signature.inputs.inputs[0]
    assert spec.type == np.dtype(np.uint8) and spec.shape == (-1, CLIP.num_frames, -1, -1, 3)
    clips = np.random.default_rng(1).integers(0, 256, (2, CLIP.num_frames, 40, 60, 3), dtype=np.uint8)
    for answer in loaded.predict(example) + loaded.predict(clips):
        _check_top_k(answer, TOP_K)
    with torch.no_grad():  # the pyfunc's softmax is the network's, on the normalised centre crop
        logits = store.model.eval()(model_input(torch.from_numpy(example).permute(0, 4, 1, 2, 3)))
    best = torch.softmax(logits, dim=-1)[0].max()
    assert loaded.predict(example, params={"top_k": 1})[0][0]["probability"] == pytest.approx(float(best), abs=1e-5)


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_named_classes(store: Store, local_model: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": store.uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", "models:/tiny@champion",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    with open(tmp_path / "serve.log", "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(f"{url}/ping", server, tmp_path / "serve.log")
        clips = np.random.default_rng(2).integers(0, 256, (2, CLIP.num_frames, 36, 48, 3), dtype=np.uint8)
        answer = _post(f"{url}/invocations", {"inputs": clips.tolist(), "params": {"top_k": 3}})
        assert len(answer["predictions"]) == 2
        for ranked in answer["predictions"]:
            _check_top_k(ranked, 3)
        stored_example = json.loads((local_model / "serving_input_example.json").read_text())
        (ranked,) = _post(f"{url}/invocations", stored_example)["predictions"]
        _check_top_k(ranked, TOP_K)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the CLI and the uvicorn worker it started
        server.wait(timeout=30)


def _check_top_k(ranked: list, k: int) -> None:
    assert len(ranked) == k and all(set(entry) == {"label", "probability"} for entry in ranked)
    assert all(entry["label"] in LABELS for entry in ranked) and len({entry["label"] for entry in ranked}) == k
    probabilities = [entry["probability"] for entry in ranked]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6


def _post(url: str, body: dict) -> dict:
    request = Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urlopen(url, timeout=2):
                return
        except (URLError, OSError):
            time.sleep(0.5)
    raise AssertionError(f"mlflow models serve did not answer {url} in {timeout_s} s:\n{log.read_text()[-3000:]}")


def test_a_model_registered_in_the_earlier_pickle_format_still_loads_for_predict(tmp_path: Path) -> None:
    uri, run_id = _tiny_store(tmp_path)
    model = build_model("oct_i3d_r18", **OPTIONS)
    mlflow.set_tracking_uri(uri)
    with _Records() as logged, mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(model, name="model", registered_model_name="old", serialization_format="pickle",
                                 metadata={"octvideo": model_metadata(model.model_name, OPTIONS, LABELS, CLIP)})
    assert logged.mentioning_pickle()  # what the test above would see, had registration pickled
    loaded = load_registered_model("models:/old/1", uri)
    assert loaded.class_names == list(LABELS) and loaded.clip == CLIP
    assert torch.equal(loaded.model.fc.weight, model.fc.weight)
