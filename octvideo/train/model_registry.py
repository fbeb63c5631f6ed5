"""The MLflow Model Registry: log a trained model, register it, and move the aliases.

Every new version gets alias ``candidate``; ``champion`` moves to it when its test top-1 beats
the current champion's (or there is none). The test top-1 is stored as the version's tag
:data:`TOP1_TAG` (and as the metric ``test/top1`` of its run), so champions are compared
without reading runs.

The model is an MLflow pyfunc logged from code (:mod:`octvideo.serving.classifier_code`), with
the files of :mod:`octvideo.serving.model_files` as its artifacts: the fp32 ``state_dict``, the
model name and build arguments, the label map and the clip settings. Nothing of it is pickled but
the weights (read with ``torch.load(weights_only=True)``); loading it rebuilds the network from
the installed ``octvideo``. The same settings are the MLmodel's ``octvideo`` metadata.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from octvideo.train.config import ClipConfig

if TYPE_CHECKING:  # imported where used: reading the registry (octvideo predict) needs no torch
    from torch import nn

logger = logging.getLogger(__name__)

CANDIDATE, CHAMPION = "candidate", "champion"
TOP1_TAG = "octvideo.test_top1"
STEP_TAG = "octvideo.global_step"


@dataclass(frozen=True)
class Registration:
    """What registering a model did."""

    name: str
    version: str
    test_top1: float
    aliases: list[str]
    previous_champion: str | None = None
    previous_champion_top1: float | None = None
    model_uri: str = field(default="")

    @property
    def promoted(self) -> bool:
        return CHAMPION in self.aliases


def model_metadata(
    model_name: str, build_kwargs: Mapping[str, Any], label_map: Mapping[str, int], clip: ClipConfig
) -> dict[str, Any]:
    """The ``octvideo`` entry of the MLmodel metadata."""
    return {
        "model_name": model_name,
        "build_kwargs": dict(build_kwargs),
        "label_map": dict(label_map),
        "clip": clip.model_dump(mode="json"),
    }


def register_trained_model(
    model: nn.Module,
    *,
    tracking_uri: str,
    registered_name: str,
    run_id: str,
    build_kwargs: Mapping[str, Any],
    label_map: Mapping[str, int],
    clip: ClipConfig,
    test_top1: float,
    global_step: int,
    description: str | None = None,
) -> Registration:
    """Log ``model`` (built by ``build_model(model.model_name, **build_kwargs)``) to MLflow run
    ``run_id``, register it as a new version of ``registered_name`` and set its aliases.

    A champion without a recorded test top-1 is replaced. The weights of run ``run_id`` at
    ``global_step`` are registered once: a run submitted again after it finished gets back the
    version it already has. ``description`` (say, what the run started from) becomes the version's.
    Call this after training: it sets the process's MLflow tracking URI
    and, like :meth:`MLflowTracker.close`, ends the run."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from octvideo.serving.classifier import CODE_FILE, classifier_signature, example_clips
    from octvideo.serving.model_files import write_model_files

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    for existing in client.search_model_versions(f"name = '{registered_name}' and run_id = '{run_id}'"):
        if existing.tags.get(STEP_TAG) == str(global_step):
            logger.info("%s version %s already holds run %s at step %d", registered_name, existing.version, run_id, global_step)
            aliases = client.get_model_version(registered_name, existing.version).aliases  # search leaves them out
            return Registration(
                registered_name, str(existing.version), float(existing.tags[TOP1_TAG]), list(aliases),
                model_uri=f"models:/{registered_name}/{existing.version}",
            )
    metadata = {"octvideo": model_metadata(model.model_name, build_kwargs, label_map, clip)}
    with tempfile.TemporaryDirectory() as folder, mlflow.start_run(run_id=run_id):
        mlflow.log_metric("test/top1", test_top1)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(CODE_FILE),
            artifacts=write_model_files(model, build_kwargs, label_map, clip, Path(folder)),
            signature=classifier_signature(clip), input_example=example_clips(clip),
            registered_model_name=registered_name, metadata=metadata,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    version = str(info.registered_model_version)
    client.set_model_version_tag(registered_name, version, TOP1_TAG, repr(float(test_top1)))
    client.set_model_version_tag(registered_name, version, STEP_TAG, str(global_step))
    if description:
        client.update_model_version(registered_name, version, description=description)
    client.set_registered_model_alias(registered_name, CANDIDATE, version)
    previous, previous_top1 = _champion(client, registered_name)
    aliases = [CANDIDATE]
    if previous is None or previous_top1 is None or test_top1 > previous_top1:
        client.set_registered_model_alias(registered_name, CHAMPION, version)
        aliases.append(CHAMPION)
        logger.info("%s version %s (test top-1 %.4f) is the new champion", registered_name, version, test_top1)
    else:
        logger.info(
            "%s version %s (test top-1 %.4f) stays candidate: champion %s has %.4f",
            registered_name, version, test_top1, previous, previous_top1,
        )
    return Registration(
        registered_name, version, float(test_top1), aliases, previous, previous_top1,
        f"models:/{registered_name}/{version}",
    )


def _champion(client: Any, name: str) -> tuple[str | None, float | None]:
    """The champion's version and test top-1 (None when it has no recorded top-1)."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    top1 = version.tags.get(TOP1_TAG)
    return str(version.version), None if top1 is None else float(top1)


__all__ = ["CANDIDATE", "CHAMPION", "Registration", "STEP_TAG", "TOP1_TAG", "model_metadata", "register_trained_model"]
