"""User errors end to end (issue 6, scenario 6): each bad configuration or request, run the way
users run it (a subprocess of the real entry point), gives one line per problem that names it,
a non-zero exit status and no stack trace. The training job fails before any cluster work: its
``RAY_ADDRESS`` answers nothing, so an attempt to reach Ray would hang, print Ray's start-up
lines or fail with another message.

Two tables: ``pipelines/kinetics.py``, and ``octvideo predict`` / ``profile`` / ``data check``.
Each run is mostly the imports of torch and its friends, so a table's runs go two at a time in a
module fixture and each case's test checks its outcome.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from octvideo.models import build_model
from octvideo.train.config import ClipConfig
from octvideo.train.model_registry import register_trained_model
from tests.conftest import S3Server
from tests.data.videos import HTML_ERROR_PAGE, random_bytes, write_bytes

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "pipelines" / "kinetics.py"
OCTVIDEO = Path(sys.executable).with_name("octvideo")
#: The training job's user errors come back in seconds (an attempt at cluster work would take longer).
FAST_SEC = 20
#: The driver reads and converts a pretrained source (torch, the network) before it can fail on it.
PRETRAINED_SEC = 60
#: Runs at a time.
PARALLEL = 2
BUCKET = "no-such-bucket-octvideo"
#: What Ray prints when a driver starts or joins a cluster.
RAY_MARKERS = ("Started a local Ray instance", "Connecting to existing Ray cluster", "Ray runtime started", "raylet")

MINIMAL = "model: {alpha: 0.5, width: 8}\ndata: {train_manifest: train.csv, val_manifest: val.csv}\n"
#: An experiment whose data can be listed (a 'path label' list), starting from ``{source}``.
PRETRAINED = (
    "model: {{name: oct_i3d_r18, alpha: 0.5, width: 8, pretrained: {source}}}\n"
    "data: {{train_manifest: videos.txt, val_manifest: videos.txt}}\n"
)


@dataclass(frozen=True)
class Case:
    """A command line and its error lines (``{tmp}``, ``{bucket}``, ``{store}``, ``{endpoint}`` filled
    in), the experiment file and environment it runs with, its exit status."""

    argv: tuple[str, ...]
    needles: tuple[str, ...]  # each error line must hold its needle, in order (format strings: braces doubled)
    status: int = 2
    config: str | None = None  # written to {tmp}/experiment.yaml
    env: dict[str, str] = field(default_factory=dict)
    seconds: float = FAST_SEC  # at most, before the error


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def _environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without tracking, S3 or Ray settings (nor credentials files),
    a Ray address where nothing listens, and ``extra``."""
    scrubbed = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "RAY_"))}
    return {
        **scrubbed, "RAY_ADDRESS": "127.0.0.1:1",
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true",
        **extra,
    }


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> Outcome:
    """``argv`` to its end, or killed after ``3 * FAST_SEC`` (status -9: an attempt to reach Ray, say)."""
    started = time.monotonic()
    try:
        completed = subprocess.run(
            argv, capture_output=True, text=True, cwd=cwd, env=_environment(env), timeout=3 * FAST_SEC
        )
    except subprocess.TimeoutExpired as killed:
        text = [out.decode() if isinstance(out, bytes) else out or "" for out in (killed.stdout, killed.stderr)]
        return Outcome(-9, *text, time.monotonic() - started)
    return Outcome(completed.returncode, completed.stdout, completed.stderr, time.monotonic() - started)


def run_table(
    cases: dict[str, Case], command: list[str], folders: pytest.TempPathFactory, fill: dict[str, str],
    prepare: Callable[[Path, Case], None],
) -> dict[str, tuple[Outcome, dict[str, str]]]:
    """Run every case (``command`` + its arguments, filled in) in a folder of its own made by
    ``prepare``, ``PARALLEL`` at a time: case name -> (outcome, what was filled in)."""
    jobs = {}
    for name, case in cases.items():
        folder = folders.mktemp(name)
        values = {**fill, "tmp": str(folder)}
        prepare(folder, case)
        argv = [*command, *(arg.format(**values) for arg in case.argv)]
        jobs[name] = (argv, folder, {key: value.format(**values) for key, value in case.env.items()}), values
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(run, *job) for name, (job, _) in jobs.items()}
        return {name: (futures[name].result(), values) for name, (_, values) in jobs.items()}


def assert_user_error(outcome: Outcome, prog: str, case: Case, fill: dict[str, str]) -> None:
    """One ``PROG: error: ...`` line on stderr per needle, each holding it, and nothing else; the
    status; no stack trace."""
    shown = f"status {outcome.returncode} after {outcome.seconds:.1f} s\nstdout:\n{outcome.stdout}\nstderr:\n{outcome.stderr}"
    assert "Traceback" not in outcome.stdout + outcome.stderr, shown
    assert outcome.returncode == case.status and outcome.stdout == "", shown
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == len(case.needles), shown
    for line, needle in zip(lines, case.needles):
        assert line.startswith(f"{prog}: error: ") and needle.format(**fill) in line, shown


# ---------------------------------------------------------------------------------------------
# pipelines/kinetics.py --config FILE [--set key=value ...]

PIPELINE_CASES = {
    "invalid_yaml": Case(
        ("--config", "{tmp}/experiment.yaml"),
        ("experiment.yaml is not valid YAML at line 2, column 5: expected ',' or '}}', but got ':' "
         "(while parsing a flow mapping from line 1, column 8)",),
        config="model: {name: oct_i3d_r18, alpha: 0.5\ndata: {train_manifest: a.csv}\n",
    ),
    "unknown_top_level_key": Case(
        ("--config", "{tmp}/experiment.yaml"), ("modell: unknown key (did you mean model?)",),
        config=MINIMAL + "modell: {alpha: 0.5}\n",
    ),
    "unknown_nested_key": Case(
        ("--config", "{tmp}/experiment.yaml"), ("model.alpah: unknown key (did you mean alpha?)",),
        config=MINIMAL.replace("alpha: 0.5", "alpah: 0.5"),
    ),
    "wrong_type": Case(
        ("--config", "{tmp}/experiment.yaml"),
        ("optim.lr: Input should be a valid number, unable to parse string as a number, got 'fast'",),
        config=MINIMAL + "optim: {lr: fast}\n",
    ),
    "alpha_above_range": Case(
        ("--config", "{tmp}/experiment.yaml"), ("model.alpha: Input should be less than 1, got 1.5",),
        config=MINIMAL.replace("alpha: 0.5", "alpha: 1.5"),
    ),
    "alpha_below_range": Case(
        ("--config", "{tmp}/experiment.yaml", "--set", "model.alpha=-0.1"),
        ("model.alpha: Input should be greater than or equal to 0, got -0.1",), config=MINIMAL,
    ),
    "unknown_model": Case(
        ("--config", "{tmp}/experiment.yaml"), ("model.name: unknown model 'oct_i3d_r999' (did you mean oct_i3d_r50",),
        config=MINIMAL.replace("alpha: 0.5", "name: oct_i3d_r999, alpha: 0.5"),
    ),
    "config_file_missing": Case(("--config", "{tmp}/nowhere.yaml"), ("config file {tmp}/nowhere.yaml does not exist",)),
    "config_file_is_a_folder": Case(("--config", "{tmp}"), ("config file {tmp} is a folder",)),
    "override_without_equals": Case(
        ("--config", "{tmp}/experiment.yaml", "--set", "optim.lr"), ("override 'optim.lr' is not of the form key.sub=value",),
        config=MINIMAL,
    ),
    "override_of_an_unknown_key": Case(
        ("--config", "{tmp}/experiment.yaml", "--set", "optim.lrr=0.1"), ("optim.lrr: unknown key (did you mean lr?)",),
        config=MINIMAL,
    ),
    "local_manifests_missing": Case(  # the training manifest exists: the others are checked before the cluster too
        ("--config", "{tmp}/experiment.yaml"),
        ("data.val_manifest: manifest val.csv does not exist; check the URL and data.storage_options; "
         "data.test_manifest: manifest test.csv does not exist",),
        config="data: {train_manifest: train.csv, val_manifest: val.csv, test_manifest: test.csv}\n",
    ),
    # Pretrained sources (made by _experiment), read and converted on the driver before the cluster.
    "pretrained_missing": Case(
        ("--config", "{tmp}/experiment.yaml"), ("model.pretrained.source: checkpoint nowhere.pt does not exist",),
        config=PRETRAINED.format(source="nowhere.pt"),
    ),
    "pretrained_corrupt": Case(
        ("--config", "{tmp}/experiment.yaml"),
        ("model.pretrained.source: corrupt.pt is not a readable PyTorch checkpoint (Unsupported operand",),
        config=PRETRAINED.format(source="corrupt.pt"), seconds=PRETRAINED_SEC,
    ),
    "pretrained_wrong_architecture": Case(
        ("--config", "{tmp}/experiment.yaml"),
        ("model.pretrained.source: slowfast.pt is an octvideo SlowFast checkpoint; it cannot start oct_i3d_r18",),
        config=PRETRAINED.format(source="slowfast.pt"), seconds=PRETRAINED_SEC,
    ),
    "pretrained_wrong_alpha": Case(
        ("--config", "{tmp}/experiment.yaml"),
        ("model.pretrained.source: alpha25.pt is an octave model whose frequency split differs from the model's "
         "(layer3.0.conv1.conv: 8 of 32 output channels low-frequency, alpha 0.25; the model's: 16, alpha 0.5)",),
        config=PRETRAINED.format(source="alpha25.pt"), seconds=PRETRAINED_SEC,
    ),
    "s3_bucket_missing": Case(
        ("--config", "{tmp}/experiment.yaml"), ("data.train_manifest: manifest s3://{bucket}/k400/train.csv does not exist",),
        config="data: {train_manifest: s3://{bucket}/k400/train.csv, val_manifest: s3://{bucket}/k400/val.csv}\n",
        env={"AWS_ENDPOINT_URL": "{endpoint}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    ),
}


def _experiment(folder: Path, case: Case) -> None:
    (folder / "train.csv").write_text("")  # a manifest that exists; never read past its existence here
    if case.config is not None and "pretrained" in case.config:
        (folder / "videos.txt").write_text("a.mp4 0\nb.mp4 1\n")
        (folder / "corrupt.pt").write_bytes(random_bytes(4096))
        torch.save(build_model("oct_slowfast_r14", alpha=0.5, width=8).state_dict(), folder / "slowfast.pt")
        torch.save(build_model("oct_i3d_r18", alpha=0.25, width=8, num_classes=2).state_dict(), folder / "alpha25.pt")
    if case.config is not None:
        (folder / "experiment.yaml").write_text(case.config.replace("{bucket}", BUCKET))


@pytest.fixture(scope="module")
def pipeline_outcomes(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> dict:
    fill = {"bucket": BUCKET, "endpoint": s3_server.endpoint_url}
    return run_table(PIPELINE_CASES, [sys.executable, str(PIPELINE)], tmp_path_factory, fill, _experiment)


@pytest.mark.parametrize("name", PIPELINE_CASES)
def test_the_training_job_rejects_user_errors_before_cluster_work(name: str, pipeline_outcomes: dict) -> None:
    outcome, fill = pipeline_outcomes[name]
    assert_user_error(outcome, "kinetics.py", PIPELINE_CASES[name], fill)
    case = PIPELINE_CASES[name]
    assert outcome.seconds < case.seconds and not any(marker in outcome.stderr for marker in RAY_MARKERS), outcome


# ---------------------------------------------------------------------------------------------
# octvideo predict / profile / data check

LABELS = {"archery": 0, "bowling": 1, "cooking": 2}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite MLflow store holding ``models:/tiny`` (aliases candidate and champion, version 1)."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("user-errors", artifact_location=(folder / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    clip = ClipConfig(num_frames=4, sampling_rate=4, train_short_side=(32, 40), crop=32, eval_short_side=32, eval_crop=32,
                      test_clips=1, test_crops=1)
    options = {"alpha": 0.5, "width": 8, "num_classes": len(LABELS)}
    register_trained_model(build_model("oct_i3d_r18", **options), tracking_uri=uri, registered_name="tiny",
                           run_id=run_id, build_kwargs=options, label_map=LABELS, clip=clip, test_top1=0.5,
                           global_step=1)
    return uri


def _bad_videos(folder: Path, case: Case) -> None:
    write_bytes(folder / "error_page.mp4", HTML_ERROR_PAGE)
    write_bytes(folder / "noise.mp4", random_bytes(4096))
    write_bytes(folder / "empty.mp4", b"")


CLI_CASES = {
    "predict_non_videos": Case(  # nothing could be classified: status 1, a line per video, in order
        ("predict", "--model", "models:/tiny@champion", "--tracking-uri", "{store}",
         "{tmp}/error_page.mp4", "{tmp}/noise.mp4", "{tmp}/empty.mp4", "{tmp}/missing.mp4"),
        (f"{{tmp}}/error_page.mp4: not a video ({len(HTML_ERROR_PAGE)} bytes that look like an HTML/XML page",
         "{tmp}/noise.mp4: not a video (4096 bytes that look like no known video format",
         "{tmp}/empty.mp4: empty (the file has 0 bytes)",
         "{tmp}/missing.mp4: not found"),
        status=1,
    ),
    "predict_unknown_model": Case(
        ("predict", "--model", "models:/kinetics@champion", "--tracking-uri", "{store}", "{tmp}/v.mp4"),
        ("cannot load models:/kinetics@champion from {store}: Registered Model with name=kinetics not found; "
         "registered models there: tiny",),
    ),
    "predict_unknown_alias": Case(
        ("predict", "--model", "models:/tiny@best", "--tracking-uri", "{store}", "{tmp}/v.mp4"),
        ("Registered model alias best not found; tiny has aliases @candidate, @champion and versions 1",),
    ),
    "predict_model_not_a_uri": Case(
        ("predict", "--model", "tiny", "--tracking-uri", "{store}", "{tmp}/v.mp4"),
        ("'tiny' does not name a registered model: use models:/NAME@ALIAS or models:/NAME/VERSION",),
    ),
    "predict_server_not_answering": Case(  # MLflow's client would retry for minutes
        ("predict", "--model", "models:/tiny@champion", "--tracking-uri", "http://127.0.0.1:1", "{tmp}/v.mp4"),
        ("MLflow tracking server http://127.0.0.1:1 does not answer",),
    ),
    "predict_without_a_store": Case(  # MLflow would create an empty sqlite:///mlflow.db here and not find the model
        ("predict", "--model", "models:/tiny@champion", "{tmp}/v.mp4"),
        ("no MLflow store at sqlite:///{tmp}/mlflow.db (the file does not exist)",),
    ),
    "profile_unknown_model": Case(
        ("profile", "--model", "oct_i3d_r999"), ("unknown model name 'oct_i3d_r999'. Did you mean oct_i3d_r50",),
    ),
    "profile_input_too_small": Case(
        ("profile", "--model", "oct_i3d_r18", "--frames", "1", "--size", "8"),
        ("oct_i3d_r18 (alpha 0.5) cannot run on a 1-frame 8x8 input",),
    ),
    "data_check_manifest_in_a_missing_bucket": Case(
        ("data", "check", "s3://{bucket}/k400/train.csv"), ("manifest s3://{bucket}/k400/train.csv does not exist",),
        env={"AWS_ENDPOINT_URL": "{endpoint}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    ),
    "data_check_without_s3_credentials": Case(
        ("data", "check", "s3://octvideo-data/k400/train.csv"),
        ("cannot read s3://octvideo-data/k400/train.csv: Unable to locate credentials (NoCredentialsError)",),
        env={"AWS_ENDPOINT_URL": "{endpoint}"},
    ),
}


@pytest.fixture(scope="module")
def cli_outcomes(tmp_path_factory: pytest.TempPathFactory, store: str, s3_server: S3Server) -> dict:
    fill = {"store": store, "bucket": BUCKET, "endpoint": s3_server.endpoint_url}
    return run_table(CLI_CASES, [str(OCTVIDEO)], tmp_path_factory, fill, _bad_videos)


@pytest.mark.parametrize("name", CLI_CASES)
def test_the_octvideo_command_rejects_user_errors(name: str, cli_outcomes: dict) -> None:
    case = CLI_CASES[name]
    outcome, fill = cli_outcomes[name]
    command = " ".join(arg for arg in case.argv[:2] if not arg.startswith("-"))
    assert_user_error(outcome, f"octvideo {command}", case, fill)
    assert not (Path(fill["tmp"]) / "mlflow.db").exists()  # a wrong store is reported, not created


def test_verbose_shows_the_error_that_caused_the_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("model: {name: oct_i3d_r50\n")
    command = [sys.executable, str(PIPELINE), "--config", str(tmp_path / "broken.yaml")]
    quiet, verbose = run(command, tmp_path, {}), run([*command, "-v"], tmp_path, {})
    assert quiet.returncode == verbose.returncode == 2
    assert quiet.stderr.strip().splitlines() == verbose.stderr.strip().splitlines()[-1:]  # the same one line, last
    assert "Traceback" not in quiet.stderr
    assert "yaml.parser.ParserError" in verbose.stderr and "The above exception was the direct cause" in verbose.stderr
