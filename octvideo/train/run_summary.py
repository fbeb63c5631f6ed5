"""What a run's MLflow page says about it besides its metrics: a description of the run (the
``mlflow.note.content`` tag, shown as its Description) and its manifests as dataset inputs.

A manifest becomes a :class:`ManifestDataset`: its URL as the source (credentials removed), a
digest of its videos and labels, so that a changed manifest shows as another dataset, and its
size as the profile. The videos are not read.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import warnings
from collections.abc import Mapping
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset

from octvideo.data.manifest import Manifest
from octvideo.train.config import ExperimentConfig
from octvideo.train.tracking import redact_url

#: The tag MLflow shows as a run's Description.
DESCRIPTION_TAG = "mlflow.note.content"
#: The manifests of a run (``data.<key>``) and their MLflow dataset contexts.
MANIFEST_CONTEXTS = {"train_manifest": "training", "val_manifest": "validation", "test_manifest": "test"}


class ManifestDataset(MetaDataset):
    """A manifest as an MLflow dataset; its profile counts videos and classes."""

    def __init__(self, source: DatasetSource, name: str, digest: str, profile: Mapping[str, int]) -> None:
        self._profile = dict(profile)
        super().__init__(source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, int]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


class ManifestURL(DatasetSource):
    """The source of a manifest at a URL whose scheme MLflow has no source for (``memory://``,
    ``az://``, ...); the MLflow UI shows it as a URL."""

    def __init__(self, url: str) -> None:
        self.url = url

    @staticmethod
    def _get_source_type() -> str:
        return "external"

    def load(self) -> str:
        raise NotImplementedError("a manifest is read with octvideo.data.load_manifest")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> ManifestURL:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> ManifestURL:
        return cls(source_dict["url"])


def manifest_source(url: str) -> DatasetSource:
    """MLflow's source for ``url`` (``s3``, ``gs``, ``local``, ``http``, ...), else a :class:`ManifestURL`."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    try:
        with warnings.catch_warnings():  # a local path "can be interpreted in multiple ways": all local
            warnings.simplefilter("ignore", UserWarning)
            return resolve_dataset_source(url)
    except MlflowException:
        return ManifestURL(url)


def manifest_digest(manifest: Manifest) -> str:
    """A short hash of the manifest's videos (URL and label, in order) and label map."""
    content = {"videos": [[entry.url, entry.label] for entry in manifest], "label_map": manifest.label_map}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:10]


def manifest_dataset(url: str, manifest: Manifest) -> ManifestDataset:
    """The manifest read from ``url`` as an MLflow dataset named after its file (or folder)."""
    url = redact_url(url)
    profile = {"num_videos": len(manifest), "num_classes": manifest.num_classes, "missing_videos": len(manifest.missing)}
    name = posixpath.basename(url.rstrip("/")) or url
    return ManifestDataset(manifest_source(url), name, manifest_digest(manifest), profile)


def manifest_datasets(config: ExperimentConfig, manifests: Mapping[str, Manifest]) -> dict[str, ManifestDataset]:
    """The run's manifests (``data.<key>`` -> manifest) as MLflow datasets by context."""
    return {
        MANIFEST_CONTEXTS[key]: manifest_dataset(getattr(config.data, key), manifest)
        for key, manifest in manifests.items()
    }


def run_description(config: ExperimentConfig, manifests: Mapping[str, Manifest], *, resumed: bool) -> str:
    """A few Markdown lines: model, data, precision and workers; the pretrained start; where a
    re-submission resumes from. ``manifests``: ``data.<key>`` -> manifest (train and val at least)."""
    model, data, scaling = config.model, config.data, config.scaling
    train, val = manifests["train_manifest"], manifests["val_manifest"]
    test = (f"tested on {redact_url(data.test_manifest)} ({len(manifests['test_manifest']):,} videos)"
            if data.test_manifest is not None else "tested on the validation split")
    lines = [
        f"**{model.name}**, alpha {model.alpha:g}, {model.num_classes or train.num_classes} classes.",
        f"Data: {redact_url(data.train_manifest)} ({len(train):,} videos); validated on "
        f"{redact_url(data.val_manifest)} ({len(val):,} videos); {test}.",
        f"Precision {config.deepspeed.precision}, DeepSpeed ZeRO-{config.deepspeed.zero_stage}, "
        f"{scaling.num_workers} workers on {'GPUs' if scaling.use_gpu else 'CPUs'}, "
        f"{config.optim.epochs} epoch{'s' if config.optim.epochs != 1 else ''}.",
    ]
    if model.pretrained is not None:
        lines.append(f"Started from {redact_url(model.pretrained.source)}.")
    if resumed:
        run_folder = redact_url(f"{config.checkpoint.storage_path.rstrip('/')}/{config.checkpoint.name}")
        lines.append(f"Resumed: `{config.checkpoint.name}` submitted again goes on from the latest checkpoint in {run_folder}.")
    return "\n\n".join(lines)


__all__ = [
    "DESCRIPTION_TAG", "MANIFEST_CONTEXTS", "ManifestDataset", "ManifestURL", "manifest_dataset",
    "manifest_datasets", "manifest_digest", "manifest_source", "run_description",
]
