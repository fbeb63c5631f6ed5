"""Training clips decoded by Ray Data on any node of the cluster: ``data.ingest: ray_data``.

:class:`RayDataLoader` is a drop-in for :class:`~octvideo.data.dataset.KineticsLoader` on the
training split. Each epoch it runs one Ray Data pipeline per rank:

    this rank's item keys (the ShardSampler's, from the resume position on)
      -> map_batches(DecodeBatch): an actor pool that decodes one training batch per call with the
         KineticsDataset's own code (clip plans, transforms, substitutes for bad videos, retries)
      -> uint8 batches through the object store -> the training worker (normalised on its device)

The actors go wherever Ray finds ``decoder_resources``: a CPU-only node that offers a custom
resource (``{"decode": 1}``) and no CPU for training workers takes the decoding off the GPU nodes.

What the DataLoader path guarantees holds, because the keys and the decoding code are the same:
the same clips per (seed, epoch, index), each video once per epoch (the same shards), resumption
after a worker failure at the batch after the checkpoint (the pipeline starts there), bad videos
reported with the batch and counted by the same :class:`BadVideoTracker`. Batches arrive in the
sampler's order (``preserve_order``). A lost decode node costs the batches it was decoding:
Ray restarts its actors elsewhere and retries their calls (Ray Data's defaults for actor pools).

Not :func:`ray.train.get_dataset_shard`: Ray Train's split hands rows to ranks as they ask, so a
rank's rows differ between runs, and after a failure it restarts the epoch from its first row.
"""

from __future__ import annotations

import collections
import json
import logging
import pickle
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import ray
import ray.data
import ray.exceptions
import torch

from octvideo.data.dataset import BadVideo, KineticsDataset, ShardLoader, TooManyBadVideos, collate
from octvideo.data.storage import StorageUnavailable

logger = logging.getLogger(__name__)

#: Batch fields that are per-item numbers, besides the clip.
_ITEM_FIELDS = ("label", "video_index", "clip_index", "spatial_index")


class DecodeBatch:
    """Ray Data's map: a batch of ``(epoch, index)`` keys -> that training batch, decoded on the
    actor's node. Bad videos come back as JSON per item; ``node`` says where the batch was decoded."""

    def __init__(self, dataset: KineticsDataset) -> None:
        self.dataset = dataset
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, keys: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = len(keys["index"])
        try:
            items = self.dataset.__getitems__(list(zip(keys["epoch"].tolist(), keys["index"].tolist())))
        except (TooManyBadVideos, StorageUnavailable) as error:
            return self._failed(error, size)
        batch = collate(items)
        return {
            "clip": batch["clip"].numpy(),
            **{field: batch[field].numpy() for field in _ITEM_FIELDS},
            "bad": np.array([json.dumps([asdict(bad) for bad in item["bad"]]) for item in items]),
            "node": np.array([self.node] * size),
            "error": np.full(size, b"", dtype=object),
        }

    def _failed(self, error: Exception, size: int) -> dict[str, np.ndarray]:
        """A batch of the usual columns that carries ``error`` to the training worker: Ray Data
        would re-raise it there as its own ``UserCodeException``, without the error's type."""
        crop, frames = self.dataset.transform.crop_size, self.dataset.clip_spec.num_frames
        return {
            "clip": np.zeros((size, 3, frames, crop, crop), np.uint8),
            **{field: np.zeros(size, np.int64) for field in _ITEM_FIELDS},
            "bad": np.array(["[]"] * size),
            "node": np.array([self.node] * size),
            "error": np.array([pickle.dumps(error)] + [b""] * (size - 1), dtype=object),
        }


class RayDataLoader(ShardLoader):
    """This rank's training batches, decoded by a pool of ``decoders`` Ray actors that each ask
    Ray for ``decoder_resources`` (``CPU`` / ``GPU`` / custom resources). The interface of
    :class:`~octvideo.data.dataset.KineticsLoader`: ``dataset``, ``tracker``, ``set_epoch``,
    ``len`` and iteration over :func:`~octvideo.data.dataset.collate` batches (last partial
    batch dropped). ``decoded_on``: batches per decode node (Ray node id) this epoch."""

    def __init__(
        self,
        dataset: KineticsDataset,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        decoders: int = 2,
        decoder_resources: Mapping[str, float] | None = None,
        prefetch_batches: int = 2,
    ) -> None:
        if decoders < 1 or prefetch_batches < 0:
            raise ValueError(f"need decoders >= 1 and prefetch_batches >= 0, got {decoders}, {prefetch_batches}")
        super().__init__(dataset, batch_size, rank=rank, world_size=world_size, shuffle=True)
        self.decoders, self.prefetch_batches = decoders, prefetch_batches
        self.remote_args = _remote_args(dict(decoder_resources or {"CPU": 1.0}))
        self.decoded_on: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.decoded_on.clear()
        keys = list(self.sampler)[: len(self) * self.batch_size]
        if not keys:
            return
        try:
            for numpy_batch in self._pipeline(keys).iter_batches(
                batch_size=self.batch_size, batch_format="numpy", prefetch_batches=self.prefetch_batches
            ):
                if numpy_batch["error"][0]:
                    raise pickle.loads(numpy_batch["error"][0])  # a TooManyBadVideos or StorageUnavailable
                batch = _torch_batch(numpy_batch)
                self.decoded_on.update(numpy_batch["node"].tolist()[:1])
                self.tracker.update(batch)
                yield batch
            self.tracker.check(final=True)
        finally:  # also when the consumer stops taking batches (a trainer takes whole optimizer steps)
            logger.info(
                "epoch %d: %d batches decoded by Ray Data on %s", self.sampler.epoch, sum(self.decoded_on.values()),
                ", ".join(f"node {node} ({count})" for node, count in sorted(self.decoded_on.items())) or "no node",
            )

    def _pipeline(self, keys: list[tuple[int, int]]) -> ray.data.Dataset:
        rows = [{"epoch": epoch, "index": index} for epoch, index in keys]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows) // self.batch_size).map_batches(
            DecodeBatch,
            fn_constructor_args=(self.dataset,),
            batch_size=self.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.decoders),
            **self.remote_args,
        )
        context = dataset.context
        context.execution_options.preserve_order = True  # the sampler's order, as the DataLoader gives it
        context.enable_progress_bars = False  # not a bar per epoch and rank in the job's log
        context.print_on_execution_start = False
        return dataset


def _remote_args(resources: dict[str, float]) -> dict[str, Any]:
    """``map_batches`` arguments for actors that each need ``resources``."""
    args: dict[str, Any] = {"num_cpus": resources.pop("CPU", 0.0), "num_gpus": resources.pop("GPU", 0.0)}
    if resources:
        args["resources"] = resources
    return args


def _torch_batch(batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """A :func:`collate` batch from the pipeline's numpy one."""
    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.require(array, requirements="W"))  # a copy only if read-only (object store)

    return {
        "clip": tensor(batch["clip"]),
        **{field: tensor(batch[field]) for field in _ITEM_FIELDS},
        "bad": [BadVideo(**fields) for item in batch["bad"].tolist() for fields in json.loads(item)],
    }
