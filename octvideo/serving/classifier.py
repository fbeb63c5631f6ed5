"""The served form of a registered model: an MLflow pyfunc that names the likeliest classes of clips.

Input: a batch of uint8 RGB clips ``(N, T, H, W, 3)``, as a decoder returns frames, with
``T = clip.num_frames`` frames ``clip.sampling_rate`` apart at ``clip.target_fps`` (the clip
settings of the model's ``clip.json`` and MLmodel metadata), of any height and width. Each clip
is seen as the test protocol's centre view: short side resized to ``clip.eval_short_side``, centre
``clip.eval_crop`` square, normalised, and split into ``[slow, fast]`` for a SlowFast network, all
inside the model. Output: per clip, the ``top_k`` (a param, default :data:`TOP_K`)
``{"label", "probability"}``, likeliest first (softmax of the one view).

The class holds no state when it is logged: :mod:`octvideo.serving.classifier_code` creates it
(MLflow's models from code), so the model stores no pickle of it, and :meth:`load_context`
rebuilds the network from the model's files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import Array, Object, Property

from octvideo.data.device import model_input as network_input
from octvideo.data.transforms import EvalTransform
from octvideo.serving.model_files import read_model_files
from octvideo.train.config import ClipConfig

#: The models-from-code file that creates a :class:`VideoClassifier` (given to ``mlflow.pyfunc.log_model``).
CODE_FILE = Path(__file__).with_name("classifier_code.py")
#: Classes named per clip unless the request's ``params`` say ``top_k``.
TOP_K = 5
#: Height and width of the stored input example: the model resizes any clip, and a clip at the
#: evaluation size is megabytes of JSON (8 x 256 x 256 x 3 values; 32 frames for SlowFast).
EXAMPLE_SIZE = 32


def classifier_signature(clip: ClipConfig) -> ModelSignature:
    """uint8 ``(N, num_frames, H, W, 3)`` in; per clip a list of ``{label, probability}`` out; ``top_k`` param."""
    ranked = Array(Object([Property("label", "string"), Property("probability", "double")]))
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, clip.num_frames, -1, -1, 3))]),
        outputs=Schema([ColSpec(ranked)]),
        params=ParamSchema([ParamSpec("top_k", "long", TOP_K)]),
    )


def example_clips(clip: ClipConfig) -> np.ndarray:
    """One random uint8 clip of :data:`EXAMPLE_SIZE` pixels square, in the input layout."""
    shape = (1, clip.num_frames, EXAMPLE_SIZE, EXAMPLE_SIZE, 3)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


class VideoClassifier(PythonModel):
    """Top-k class names and probabilities of uint8 clips (see the module's docstring)."""

    def load_context(self, context: PythonModelContext) -> None:
        self.network = read_model_files(context.artifacts)
        self.transform = EvalTransform(self.network.clip.eval_short_side, self.network.clip.eval_crop)
        self.speed_ratio = getattr(self.network.model, "speed_ratio", None)

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> list[list[dict[str, Any]]]:
        views = torch.stack([self.transform(clip) for clip in torch.from_numpy(np.ascontiguousarray(model_input))])
        with torch.no_grad():
            probs = torch.softmax(self.network.model(network_input(views, self.speed_ratio)), dim=-1)
        top_k = min(int((params or {}).get("top_k", TOP_K)), probs.shape[-1])
        values, indices = probs.topk(top_k, dim=-1)
        names = self.network.class_names
        return [
            [{"label": names[i], "probability": p} for p, i in zip(row_values, row_indices)]
            for row_values, row_indices in zip(values.tolist(), indices.tolist())
        ]


__all__ = ["CODE_FILE", "EXAMPLE_SIZE", "TOP_K", "VideoClassifier", "classifier_signature", "example_clips"]
