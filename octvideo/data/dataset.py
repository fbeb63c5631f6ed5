"""Kinetics clips for training and evaluation: manifest -> decode -> sample -> transform -> batch.

:class:`KineticsDataset` turns item keys into uint8 ``(C, T, H, W)`` clips; :class:`ShardSampler`
gives each rank its share of the items per epoch; :class:`KineticsLoader` wraps a DataLoader over
both and feeds a :class:`BadVideoTracker` in the training process.

Randomness. Every random choice an item makes (clip start, short side, crop, flip) comes from
generators seeded with ``(seed, epoch, index, attempt, purpose)``, and substitutes for a bad
video from ``(seed, epoch, video, attempt)``, never from global RNG state, so an item is the same in any worker, any number of workers and
any number of ranks. The sampler yields ``(epoch, index)`` keys, so the epoch reaches workers
even when they persist across epochs; a bare ``int`` key uses :meth:`KineticsDataset.set_epoch`'s.

Workers. ``__init__`` opens nothing: the dataset holds the manifest and plain options only, and
every item opens its video through fsspec itself, so it pickles for spawn / forkserver / Ray and
survives fork. Per-process state (videos found bad, the test-mode decode cache) is left out when
pickled.

Bad videos never stop an epoch: a video that fails with :class:`VideoDecodeError` is replaced by
another of the split (chosen from the item's generator, up to ``max_retries`` times). The item
returns what it found bad under ``"bad"``; :func:`collate` concatenates those lists, and the
tracker in the training process logs each video once and raises :class:`TooManyBadVideos` once
the share of bad videos is past ``max_bad_fraction``. Returning reports with the data needs no
shared state between processes and works the same under Ray. A read that fails because the
storage does (transient errors past the retry policy) is not the video's fault: it raises
:class:`~octvideo.data.storage.StorageUnavailable` instead of counting the video as bad.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from octvideo.data.decode import DEFAULT_TIMEOUT_SEC, VideoReader
from octvideo.data.fetch import VideoFetcher
from octvideo.data.manifest import Manifest, load_manifest
from octvideo.data.sampling import ClipPlan, ClipSpec, Mode, multiview_plans, train_plan, val_plan
from octvideo.data.storage import (
    DEFAULT_RETRY,
    NO_RETRY,
    RetryPolicy,
    StorageUnavailable,
    bounded_storage_options,
    retry_call,
    retry_storage_call,
)
from octvideo.data.transforms import EvalTransform, TrainTransform
from octvideo.data.video_errors import VideoDecodeError, is_storage_hiccup

logger = logging.getLogger(__name__)

# Purposes of an item's generators (last element of their seed).
_SUBSTITUTE, _START, _SPATIAL, _SCALE = range(4)


class TooManyBadVideos(RuntimeError):
    """Too many videos of the split cannot be read: past ``max_bad_fraction``, or an item and all
    its substitutes failed. The message lists examples with their reasons. Takes the message
    alone, so that a DataLoader re-raises it in the main process with its type."""


@dataclass(frozen=True)
class BadVideo:
    """An unreadable video: its index in the manifest, URL, reason (see ``VideoDecodeError``) and
    full message (URL, reason, detail and what to do)."""

    video_index: int
    url: str
    reason: str
    message: str


class KineticsDataset(Dataset):
    """Clips of the videos of a manifest, as dicts of

    * ``clip``: uint8 ``(C, T, H, W)``;
    * ``label``, ``video_index``: the class and manifest index of the video the clip came from
      (a substitute's, when the wanted video was bad: evaluation should group views by it);
    * ``clip_index``, ``spatial_index``: the view (the temporal clip and -1, a random crop, in train mode);
    * ``bad``: list of :class:`BadVideo` this item came across (see :func:`collate`).

    ``mode`` train: one item per video, random clip start, short side drawn in
    ``short_side_range``, random ``crop_size`` crop and horizontal flip (``flip_prob``: 0 for
    classes that a mirror turns into each other, such as left / right motions); with
    ``train_clips x train_crops`` > 1 (PySlowFast's ``TRAIN_CROP_NUM_TEMPORAL`` x ``AUG.NUM_SAMPLE``),
    that many items per video from one decode: each temporal clip its own start, each item its own
    crop and flip, one short side per video. val: one item per video, centre clip at
    ``eval_short_side``, centre crop. test: ``num_clips * num_crops`` items per video. Items of a
    video are ``video * views + view``; a worker decodes all clips of a video in one pass on its
    first view and keeps them for the next views, so keep views of a video in one batch (a batch
    size that is a multiple of the views) to decode each video once.

    The decoder scales frames to the short side inside FFmpeg; the transforms only crop and flip.
    ``manifest`` is a :class:`Manifest` or a URL read with :func:`load_manifest` (``root``,
    ``split``, ``storage_options``). ``decode_threads`` is per item (DataLoader workers give the
    parallelism). ``prefetch_videos``: how many remote videos of a batch are downloaded at once,
    whole, while the first ones decode (:mod:`octvideo.data.fetch`; 0: stream each when decoded).
    See the module docstring for randomness, workers and bad videos.
    """

    def __init__(
        self,
        manifest: Manifest | str,
        mode: Mode | str = Mode.TRAIN,
        *,
        root: str | None = None,
        split: str | None = None,
        num_frames: int = 8,
        sampling_rate: int = 8,
        target_fps: float = 30.0,
        short_side_range: tuple[int, int] = (256, 320),
        eval_short_side: int = 256,
        crop_size: int = 224,
        flip_prob: float = 0.5,
        num_clips: int = 10,
        num_crops: int = 3,
        train_clips: int = 1,
        train_crops: int = 1,
        seed: int = 0,
        storage_options: Mapping[str, Any] | None = None,
        decode_threads: int = 1,
        timeout_sec: float = DEFAULT_TIMEOUT_SEC,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_retries: int = 10,
        max_bad_fraction: float = 0.05,
        min_videos_tried: int = 500,
        prefetch_videos: int = 8,
    ) -> None:
        if mode not in {m.value for m in Mode}:
            raise ValueError(f"unknown mode {mode!r}; use 'train', 'val' or 'test'")
        self.mode = Mode(mode)
        self.storage_options = dict(storage_options or {})
        if isinstance(manifest, str):
            url, options = manifest, bounded_storage_options(manifest, self.storage_options, retry.max_total_sec)
            manifest = retry_storage_call(lambda: load_manifest(url, root, split, options), retry, f"reading {url}")
        if len(manifest) == 0:
            raise ValueError("the manifest has no videos")
        if decode_threads < 0 or max_retries < 0 or min_videos_tried < 1 or prefetch_videos < 0:
            raise ValueError(
                "need decode_threads >= 0, max_retries >= 0, min_videos_tried >= 1 and prefetch_videos >= 0; "
                f"got {decode_threads}, {max_retries}, {min_videos_tried}, {prefetch_videos}"
            )
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.manifest = manifest
        self.clip_spec = ClipSpec(num_frames, sampling_rate, target_fps)
        if self.mode is Mode.TRAIN:
            self.transform: TrainTransform | EvalTransform = TrainTransform(
                tuple(short_side_range), crop_size, flip_prob
            )
        else:
            self.transform = EvalTransform(eval_short_side, crop_size)
        multiview_plans(0.0, self.clip_spec, num_clips, num_crops)  # checks num_clips, num_crops
        if min(train_clips, train_crops) < 1:
            raise ValueError(f"need train_clips >= 1 and train_crops >= 1, got {train_clips}, {train_crops}")
        self.views_per_video = {Mode.TRAIN: train_clips * train_crops, Mode.VAL: 1, Mode.TEST: num_clips * num_crops}[self.mode]
        self.num_clips, self.num_crops = num_clips, num_crops
        self.train_clips, self.train_crops = train_clips, train_crops
        self.seed, self.epoch = seed, 0
        self.decode_threads, self.timeout_sec, self.retry = decode_threads, timeout_sec, retry
        self.max_retries = max_retries
        self.max_bad_fraction, self.min_videos_tried = max_bad_fraction, min_videos_tried
        self._known_bad: dict[int, BadVideo] = {}
        self._cache: tuple[tuple[int, ...], list[ClipPlan], list[torch.Tensor]] | None = None
        self.fetcher = (
            VideoFetcher(self.storage_options, retry.max_total_sec, max_videos=prefetch_videos) if prefetch_videos else None
        )

    def __len__(self) -> int:
        return len(self.manifest) * self.views_per_video

    @property
    def num_videos(self) -> int:
        return len(self.manifest)

    def set_epoch(self, epoch: int) -> None:
        """The epoch of ``int`` keys (the sampler's ``(epoch, index)`` keys carry their own)."""
        self.epoch = epoch

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} of a dataset of {len(self)}")
        wanted, view = divmod(index, self.views_per_video)
        found: list[BadVideo] = []
        failed: list[BadVideo] = []
        for attempt in range(self.max_retries + 1):
            item_key = (self.seed, epoch, index, attempt)
            video = wanted if attempt == 0 else self._substitute(wanted, epoch, attempt)
            if video in self._known_bad:
                failed.append(self._known_bad[video])
                continue
            try:
                clip, plan = self._view(video, view, item_key)
            except VideoDecodeError as error:
                if is_storage_hiccup(error):  # retried for as long as self.retry allows: not the video's fault
                    raise StorageUnavailable.after(f"reading {self.manifest[video].url}", self.retry.max_total_sec, error) from error
                bad = BadVideo(video, self.manifest[video].url, error.reason, str(error))
                logger.debug("item %d: video %d is unreadable: %s", index, video, bad.message)
                self._known_bad[video] = bad
                found.append(bad)
                failed.append(bad)
                continue
            return {
                "clip": clip,
                "label": self.manifest[video].label,
                "video_index": video,
                "clip_index": plan.clip_index,
                "spatial_index": plan.spatial_index,
                "bad": found,
            }
        raise TooManyBadVideos(
            f"item {index}: video {wanted} and {len(failed) - 1} substitute(s) are unreadable "
            f"(max_retries={self.max_retries}); e.g.\n{_examples(failed)}"
        )

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[dict[str, Any]]:
        """A batch of items (what a DataLoader asks a worker for): the batch's remote videos are
        fetched together, ``prefetch_videos`` at a time, while the first ones decode."""
        if self.fetcher is None:
            return [self[key] for key in keys]
        cached = self._cache[0][0] if self._cache is not None else None
        videos = dict.fromkeys(_index(key) // self.views_per_video for key in keys)
        self.fetcher.prefetch(self.manifest[video].url for video in videos if video != cached)
        try:
            return [self[key] for key in keys]
        finally:
            self.fetcher.discard()

    def __getstate__(self) -> dict[str, Any]:
        # What this process found or decoded stays here; a worker starts afresh.
        return {**self.__dict__, "_known_bad": {}, "_cache": None}

    def _substitute(self, wanted: int, epoch: int, attempt: int) -> int:
        """Another video of the split, the same for every view of ``wanted`` (so that a test
        video's views are all replaced by the same views of one other video)."""
        if len(self.manifest) == 1:
            return wanted
        generator = _rng(self.seed, epoch, wanted, attempt, _SUBSTITUTE)
        other = int(torch.randint(len(self.manifest) - 1, (), generator=generator))
        return other + (other >= wanted)

    def _view(
        self, video: int, view: int, item_key: tuple[int, ...]
    ) -> tuple[torch.Tensor, ClipPlan]:
        spec, url = self.clip_spec, self.manifest[video].url
        if self.mode is Mode.TRAIN and self.views_per_video > 1:
            return self._train_view(video, view, item_key)
        if self.mode is Mode.TRAIN:
            spatial = _rng(*item_key, _SPATIAL)
            short_side = self.transform.draw_short_side(spatial)
            plans, clips = self._decode(
                url,
                lambda duration: [train_plan(duration, spec, _rng(*item_key, _START))],
                short_side,
            )
            return self.transform(clips[0], spatial, short_side), plans[0]
        if self.mode is Mode.VAL:
            plans, clips = self._decode(
                url, lambda duration: [val_plan(duration, spec)], self.transform.short_side
            )
            return self.transform(clips[0], plans[0].spatial_index), plans[0]
        if self._cache is None or self._cache[0] != (video,):
            self._cache = None  # free the previous video's clips before decoding the next
            plans, clips = self._decode(
                url,
                lambda duration: multiview_plans(duration, spec, self.num_clips, self.num_crops),
                self.transform.short_side,
                views_per_clip=self.num_crops,
            )
            self._cache = ((video,), plans, clips)
        _, plans, clips = self._cache
        plan = plans[view]
        return self.transform(clips[plan.clip_index], plan.spatial_index), plan

    def _train_view(
        self, video: int, view: int, item_key: tuple[int, ...]
    ) -> tuple[torch.Tensor, ClipPlan]:
        """View ``view`` of ``train_clips x train_crops`` of a training video, all decoded in one
        pass on its first view. The video's scale is drawn once (one decode, one short side);
        each temporal clip draws its start, and each view its crop and flip, from its own keys."""
        seed, epoch, index, attempt = item_key
        first = index - view  # the keys of the video's first view give what its views share
        short_side = self.transform.draw_short_side(_rng(seed, epoch, first, attempt, _SCALE))
        if self._cache is None or self._cache[0] != (video, epoch, attempt, first):
            self._cache = None
            plans, clips = self._decode(
                self.manifest[video].url,
                lambda duration: [
                    replace(
                        train_plan(duration, self.clip_spec, _rng(seed, epoch, first + t * self.train_crops, attempt, _START)),
                        clip_index=t,
                    )
                    for t in range(self.train_clips)
                ],
                short_side,
            )
            self._cache = ((video, epoch, attempt, first), plans, clips)
        _, plans, clips = self._cache
        clip_index = view // self.train_crops
        return self.transform(clips[clip_index], _rng(*item_key, _SPATIAL), short_side), plans[clip_index]

    def _decode(
        self,
        url: str,
        plan: Callable[[float], list[ClipPlan]],
        short_side: int,
        views_per_clip: int = 1,
    ) -> tuple[list[ClipPlan], list[torch.Tensor]]:
        """Open ``url`` once, plan views from its duration, decode one clip per
        ``views_per_clip`` views. Transient storage errors retry the whole read under
        ``self.retry``; ``plan`` must give the same views every time it is called."""
        spec = self.clip_spec
        options = bounded_storage_options(url, self.storage_options, self.retry.max_total_sec)

        def attempt() -> tuple[list[ClipPlan], list[torch.Tensor]]:
            source = self.fetcher.take(url) if self.fetcher is not None else url  # bytes on the first try
            with VideoReader(source, options, threads=self.decode_threads, retry=NO_RETRY) as video:
                plans = plan(video.info(self.timeout_sec).duration_sec)
                clips = video.read_clips(
                    [p.start_sec for p in plans[::views_per_clip]],
                    spec.num_frames,
                    spec.sampling_rate,
                    spec.target_fps,
                    short_side,
                    timeout_sec=self.timeout_sec,
                )
            return plans, clips

        return retry_call(attempt, self.retry, retryable=is_storage_hiccup, what=f"reading {url}")


class ShardSampler(Sampler[tuple[int, int]]):
    """This rank's share of a dataset's items for one epoch, as ``(epoch, index)`` keys.

    Items come in groups of ``group`` consecutive indices (the views of a test video) that are
    never split. The groups, shuffled by ``(seed, epoch)`` or in order, are padded by wrapping
    around to a multiple of ``world_size`` (as DistributedSampler does) and cut into
    ``world_size`` contiguous equal shards: disjoint but for the padding, and covering all items.
    So every video's views are on one rank, which decodes the video once. Call
    :meth:`set_epoch` before each epoch; its ``start`` resumes an epoch part-way without loading
    the items before it.
    """

    def __init__(
        self,
        num_items: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        group: int = 1,
    ) -> None:
        if num_items < 1 or world_size < 1 or not 0 <= rank < world_size or group < 1 or num_items % group:
            raise ValueError(
                f"need num_items >= 1, a multiple of group >= 1, and 0 <= rank < world_size; got "
                f"num_items={num_items}, group={group}, rank={rank}, world_size={world_size}"
            )
        self.num_items, self.rank, self.world_size, self.group = num_items, rank, world_size, group
        self.shuffle, self.seed, self.epoch, self.start = shuffle, seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Epoch ``epoch``'s shard, from its item ``start`` on (0: the whole shard)."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.epoch, self.start = epoch, start

    @property
    def shard_size(self) -> int:
        """Items per shard, padding included (the same on every rank)."""
        return math.ceil(self.num_items // self.group / self.world_size) * self.group

    def __len__(self) -> int:
        return max(0, self.shard_size - self.start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        num_groups = self.num_items // self.group
        if self.shuffle:
            order = torch.randperm(num_groups, generator=_rng(self.seed, self.epoch))
        else:
            order = torch.arange(num_groups)
        size = self.shard_size // self.group
        padded = order.repeat(math.ceil(size * self.world_size / num_groups))
        groups = padded[self.rank * size : (self.rank + 1) * size]
        items = (groups[:, None] * self.group + torch.arange(self.group)).flatten()
        for index in items[self.start :].tolist():
            yield self.epoch, index


def collate(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch :class:`KineticsDataset` items: tensors stacked (``clip`` stays uint8), ``bad``
    concatenated into one list. Pass it as ``collate_fn`` to a DataLoader of that dataset."""
    batch = default_collate([{k: v for k, v in s.items() if k != "bad"} for s in samples])
    batch["bad"] = [bad for s in samples for bad in s["bad"]]
    return batch


class BadVideoTracker:
    """Which videos of a split a loader tried and found bad, in the process that consumes its batches.

    Its size is fixed by the split: two flags per video (tried, bad), whatever the number of
    steps or epochs, so ranks can merge what they met with one element-wise maximum. The
    :class:`BadVideo` reports (a message per bad video) are kept for the run's log; they are
    few, since training stops past ``max_bad_fraction``.

    Logs each bad video once (a warning with its URL and reason) and raises
    :class:`TooManyBadVideos` when more than ``max_bad_fraction`` of the distinct videos tried
    are bad, judged once ``min_videos_tried`` videos were tried, or at the end of an epoch
    (``check(final=True)``) for splits or shards smaller than that.
    """

    def __init__(self, num_videos: int, max_bad_fraction: float = 0.05, min_videos_tried: int = 500) -> None:
        self.max_bad_fraction, self.min_videos_tried = max_bad_fraction, min_videos_tried
        self.tried = torch.zeros(num_videos, dtype=torch.bool)
        self.bad = torch.zeros(num_videos, dtype=torch.bool)
        self.reports: dict[str, BadVideo] = {}

    @property
    def bad_videos(self) -> dict[str, str]:
        """URL -> reason of every bad video found so far."""
        return {url: bad.reason for url, bad in self.reports.items()}

    @property
    def num_tried(self) -> int:
        """Distinct videos decoded or found bad so far."""
        return int(self.tried.sum())

    def update(self, batch: Mapping[str, Any]) -> None:
        """Record a :func:`collate` batch's videos and bad videos, then :meth:`check`."""
        self.tried[torch.as_tensor(batch["video_index"])] = True
        for bad in batch["bad"]:
            self.tried[bad.video_index] = self.bad[bad.video_index] = True
            if bad.url not in self.reports:
                self.reports[bad.url] = bad
                logger.warning(
                    "unreadable video replaced by another (%s): %s", bad.reason, bad.message
                )
        self.check()

    def check(self, final: bool = False) -> None:
        """Raise TooManyBadVideos past the limit; ``final`` judges however few were tried."""
        self.judge(self.num_tried, int(self.bad.sum()), self.reports.values(), final=final)

    def judge(self, tried: int, bad: int, reports: Iterable[BadVideo], *, final: bool) -> None:
        """Raise TooManyBadVideos if ``bad`` of ``tried`` videos is past this tracker's limit
        (also for counts merged over ranks; ``reports`` give the examples)."""
        if not tried or (tried < self.min_videos_tried and not final):
            return
        if bad > self.max_bad_fraction * tried:
            reports = list(reports)
            reasons: dict[str, int] = {}
            for report in reports:
                reasons[report.reason] = reasons.get(report.reason, 0) + 1
            summary = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
            raise TooManyBadVideos(
                f"{bad} of {tried} videos tried are unreadable ({summary}), more than "
                f"max_bad_fraction={self.max_bad_fraction:.1%}; fix or drop them from the "
                f"manifest, or raise max_bad_fraction. E.g.\n{_examples(reports)}"
            )


class ShardLoader:
    """What the two training-batch loaders share (this one's :class:`KineticsLoader` and Ray
    Data's ``RayDataLoader``): this rank's :class:`ShardSampler` shard of a
    :class:`KineticsDataset`, and the :class:`BadVideoTracker` its batches feed."""

    def __init__(self, dataset: KineticsDataset, batch_size: int, *, rank: int, world_size: int, shuffle: bool) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.sampler = ShardSampler(
            len(dataset), rank=rank, world_size=world_size, shuffle=shuffle, seed=dataset.seed,
            group=dataset.views_per_video,
        )
        self.tracker = BadVideoTracker(dataset.num_videos, dataset.max_bad_fraction, dataset.min_videos_tried)

    @property
    def bad_videos(self) -> dict[str, str]:
        """URL -> reason of every bad video met so far, across epochs."""
        return self.tracker.bad_videos

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Start epoch ``epoch``, or resume it after its first ``skip_batches`` batches (never loaded)."""
        self.sampler.set_epoch(epoch, start=skip_batches * self.batch_size)
        self.dataset.set_epoch(epoch)


class KineticsLoader(ShardLoader):
    """A DataLoader over this rank's :class:`ShardSampler` shard of a :class:`KineticsDataset`
    that feeds every batch to a :class:`BadVideoTracker` (``bad_videos``) before yielding it.

    Batches are :func:`collate` dicts with uint8 clips; convert them on the device with
    :func:`octvideo.data.device.model_input`. ``shuffle`` and ``drop_last`` default to True in
    train mode and False otherwise. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        dataset: KineticsDataset,
        batch_size: int,
        *,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        multiprocessing_context: str | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        training = dataset.mode is Mode.TRAIN
        super().__init__(dataset, batch_size, rank=rank, world_size=world_size, shuffle=training if shuffle is None else shuffle)
        self.dataloader = DataLoader(
            dataset,
            batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            drop_last=training if drop_last is None else drop_last,
            multiprocessing_context=multiprocessing_context if num_workers else None,
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=prefetch_factor,
        )

    def __len__(self) -> int:
        return len(self.dataloader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = iter(self.dataloader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as error:
                # The DataLoader re-raises a worker's error from frames that hold its iterator,
                # in a reference cycle: the workers would live until a garbage collection, which
                # then waits 5 s for each before killing it. Drop the iterator and those frames
                # (the worker's traceback is in the message) so that they stop now.
                del batches
                raise error.with_traceback(None)  # noqa: B904 - the same error, re-raised without those frames
            self.tracker.update(batch)
            yield batch
        self.tracker.check(final=True)


def _rng(*key: int) -> torch.Generator:
    """A generator seeded from a tuple of non-negative ints, well mixed (NumPy SeedSequence)."""
    seed = np.random.SeedSequence(key).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(seed))


def _index(key: int | tuple[int, int]) -> int:
    return key[1] if isinstance(key, tuple) else key


def _examples(reports: Iterable[BadVideo], limit: int = 5) -> str:
    reports = list(reports)
    lines = [f"  {bad.message}" for bad in reports[:limit]]
    if len(reports) > limit:
        lines.append(f"  ... and {len(reports) - limit} more")
    return "\n".join(lines)
