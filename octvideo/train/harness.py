"""The per-worker training logic without Ray: a plain ``torch.distributed`` group, synthetic uint8
clips, checkpoints on local disk. It proves the GPU path (NCCL, DeepSpeed, bf16 autocast) on a
machine that has no Ray, MLflow or object storage, and runs the same checks under gloo on CPU.

    python -m octvideo.train.harness --device cuda --model oct_i3d_r50 --size 224 --steps 60 \\
        --zero-stage 2 --precision bf16 --output result.json
    python -m octvideo.train.harness --device cpu --world-size 2 --width 8 --size 32 --frames 4

One run trains ``--steps`` optimizer steps (one epoch, with a checkpoint midway and at its end,
validation and the multi-view test), exports the fp32 weights, then builds a fresh
:class:`~octvideo.train.trainer.Trainer` that restores the last checkpoint and trains a second
epoch. Each worker checks what the CPU suite and the GPU acceptance assert (see :func:`checks`):
the devices of every tensor that reached the process group, batch-norm dtypes and statistics
across ranks, the export against the optimizer's fp32 weights, the bad-video accounting. Rank 0
writes the figures and the checks as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from octvideo.data import KineticsDataset, Manifest, VideoDecodeError, VideoEntry
from octvideo.data.sampling import ClipPlan
from octvideo.train.checkpoint import TrainState, load_engine, load_weights, save_engine, save_weights
from octvideo.train.config import ExperimentConfig, parse_config
from octvideo.train.pretrained import read_start
from octvideo.train.trainer import Trainer

logger = logging.getLogger(__name__)

#: torch.distributed calls the recorder watches (every collective the training can issue).
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast",
               "reduce", "all_to_all_single", "reduce_scatter", "all_gather_object", "broadcast_object_list")


class SyntheticClips(KineticsDataset):
    """A :class:`KineticsDataset` whose videos are made up in memory: a fixed random clip per
    process, rolled by the video index, at the crop size; the videos in ``bad`` fail to decode.
    Everything else (sampling, sharding, bad-video substitutes) is the real dataset's."""

    def __init__(self, num_videos: int, num_classes: int, mode: str, *, bad: frozenset[int] = frozenset(), **options: Any) -> None:
        entries = tuple(VideoEntry(f"synthetic://video_{i}", i % num_classes) for i in range(num_videos))
        label_map = {f"class_{c}": c for c in range(num_classes)}
        super().__init__(Manifest(entries, label_map), mode, **options)
        self.bad_indices = bad
        self._pattern: torch.Tensor | None = None

    def _view(self, video: int, view: int, item_key: tuple[int, ...]) -> tuple[torch.Tensor, ClipPlan]:
        if video in self.bad_indices:
            raise VideoDecodeError(self.manifest[video].url, "corrupt", "made bad by the harness")
        if self._pattern is None:
            size = self.transform.crop_size
            self._pattern = torch.randint(0, 256, (3, self.clip_spec.num_frames, size, size), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(self.seed))
        plan = ClipPlan(0.0, view // self.num_crops, view % self.num_crops if self.mode.value == "test" else 0)
        return self._pattern.roll(video, dims=-1), plan

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_pattern": None}


class LocalRun:
    """A :class:`~octvideo.train.trainer.Run` on a local folder shared by the ranks: checkpoints
    in ``checkpoint_<step>`` folders, the reports kept in memory."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.folder, self.rank, self.node = folder, rank, socket.gethostname()
        self.reports: list[dict[str, float]] = []

    def start_weights(self, config: ExperimentConfig) -> dict[str, torch.Tensor] | None:
        return None if any(self.folder.glob("checkpoint_*/latest")) else read_start(config)

    def restore(self, engine: Any) -> TrainState | None:
        done = sorted(self.folder.glob("checkpoint_*/latest"))
        return load_engine(engine, str(done[-1].parent)) if done else None

    def report(self, metrics: Mapping[str, float], engine: Any, state: TrainState | None) -> None:
        self.reports.append(dict(metrics))
        if state is not None:
            save_engine(engine, state, str(self.folder / f"checkpoint_{state.global_step:06d}"))

    def write_weights(self, state: Mapping[str, torch.Tensor]) -> str:
        path = self.folder / "model_fp32.pt"
        with open(path, "wb") as out:
            save_weights(state, out)
        return str(path)


@contextmanager
def recorded_collectives() -> Iterator[list[tuple[str, str, int]]]:
    """Record ``(call, device type, bytes)`` for every tensor that reaches ``torch.distributed``
    through the calls in :data:`COLLECTIVES` (``"object"`` for pickled objects) while inside."""
    from torch.distributed import distributed_c10d

    calls: list[tuple[str, str, int]] = []
    saved = {name: getattr(distributed_c10d, name) for name in COLLECTIVES}

    def recorder(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            for value in [*args, *kwargs.values()]:
                for tensor in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(tensor, torch.Tensor):
                        calls.append((name, tensor.device.type, tensor.numel() * tensor.element_size()))
            if name.endswith("_object") or name.endswith("_object_list"):
                calls.append((name, "object", 0))
            return call(*args, **kwargs)
        return record

    for name, call in saved.items():
        setattr(distributed_c10d, name, recorder(name, call))
        setattr(dist, name, getattr(distributed_c10d, name))
    try:
        yield calls
    finally:
        for name, call in saved.items():
            setattr(distributed_c10d, name, call)
            setattr(dist, name, call)


def harness_config(args: argparse.Namespace, folder: Path, epochs: int) -> ExperimentConfig:
    """The experiment the harness trains: ``args``' network and DeepSpeed settings, one optimizer
    step per batch, ``args.steps`` steps an epoch, a checkpoint midway."""
    return parse_config({
        "model": {"name": args.model, "alpha": args.alpha, "width": args.width, "num_classes": args.classes,
                  "memory_format": args.memory_format, "compile": args.compile, "compile_backend": args.compile_backend},
        "data": {"train_manifest": "synthetic", "val_manifest": "synthetic", "workers": args.data_workers,
                 "clip": {"num_frames": args.frames, "train_short_side": [args.size, args.size], "crop": args.size,
                          "eval_short_side": args.size, "eval_crop": args.size, "test_clips": 2, "test_crops": 1}},
        "optim": {"lr": 0.01, "epochs": epochs, "warmup_epochs": 0, "batch_size_per_worker": args.batch},
        "deepspeed": {"zero_stage": args.zero_stage, "precision": args.precision},
        "scaling": {"num_workers": args.world_size, "use_gpu": args.device == "cuda"},
        "checkpoint": {"storage_path": str(folder), "every_steps": max(1, args.steps // 2)},
        "tracking": {"log_every_steps": args.log_every},
    })


def synthetic_datasets(args: argparse.Namespace) -> Callable[[str], SyntheticClips]:
    """``datasets(mode)`` for the Trainer: ``args.steps`` batches per rank and epoch for
    training (with ``args.bad_videos`` bad ones), a few batches for validation and test."""
    clip = {"num_frames": args.frames, "crop_size": args.size, "eval_short_side": args.size,
            "short_side_range": (args.size, args.size), "num_clips": 2, "num_crops": 1, "max_bad_fraction": 0.5}
    sizes = {"train": args.steps * args.batch * args.world_size, "val": 2 * args.batch * args.world_size,
             "test": args.batch * args.world_size}

    def datasets(mode: str) -> SyntheticClips:
        every = max(1, sizes[mode] // max(args.bad_videos, 1))
        bad = frozenset(range(0, sizes[mode], every)[: args.bad_videos]) if mode == "train" else frozenset()
        return SyntheticClips(sizes[mode], args.classes, mode, bad=bad, **clip)

    return datasets


def watch_eval_batch_norm(module: torch.nn.Module) -> list[float]:
    """A list that gets, at the first forward of every evaluation pass, the sum of all batch-norm
    running statistics (float64): equal across ranks exactly when the statistics are."""
    sums: list[float] = []
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    previous = {"training": True}

    def hook(_: torch.nn.Module, __: Any) -> None:
        if previous["training"] and not module.training:
            sums.append(float(sum(m.running_mean.double().sum() + m.running_var.double().sum() for m in norms)))
        previous["training"] = module.training

    module.register_forward_pre_hook(hook)
    return sums


def export_check(trainer: Trainer, weights: dict[str, torch.Tensor], folder: Path) -> dict[str, Any]:
    """The exported weights against the optimizer's fp32 weights, read another way: the fp32
    parameters the optimizer steps under ZeRO-0; the ZeRO shards of the last checkpoint through
    DeepSpeed's own ``zero_to_fp32`` under ZeRO 1-3."""
    engine, names = trainer.engine, dict(trainer.engine.module.named_parameters())
    if trainer.config.deepspeed.zero_stage == 0:
        stepped = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
        reference = {n: p.detach().float().cpu() for n, p in names.items() if id(p) in stepped}
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        last = sorted(folder.glob("checkpoint_*/latest"))[-1].parent
        reference = get_fp32_state_dict_from_zero_checkpoint(str(last), tag="deepspeed")
    matrices = [n for n in names if weights[n].numel() > 1]
    return {
        "export_all_fp32": all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point()),
        "export_equals_optimizer_weights": set(names) <= set(reference)
        and all(torch.equal(weights[n], reference[n].float().cpu()) for n in names),
        "export_bf16_representable_share": sum(
            bool(torch.equal(weights[n], weights[n].bfloat16().float())) for n in matrices) / len(matrices),
    }


def checks(trainer: Trainer, run: LocalRun, eval_bn_sums: list[float], calls: list[tuple[str, str, int]]) -> dict[str, Any]:
    """What this worker found (collective: every rank calls it)."""
    module, collectives = trainer.engine.module, trainer.collectives
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    eval_bn_sums_equal = len({tuple(s) for s in collectives.gather_objects(eval_bn_sums)}) == 1  # after rank 0 wrote
    with open(run.folder / "model_fp32.pt", "rb") as file:
        weights = load_weights(file)
    steps = [r for r in run.reports if "val_clip_top1" not in r]  # the step reports
    return {
        "device": str(trainer.device),
        "collective_devices": sorted({device for _, device, _ in calls}),
        "collective_calls": {name: sum(1 for call in calls if call[0] == name) for name, _, _ in calls},
        "batch_norm_fp32": all(t.dtype == torch.float32 for m in norms for t in [*m.parameters(), m.running_mean, m.running_var]),
        "eval_bn_sums_equal_across_ranks": eval_bn_sums_equal,
        "eval_passes": len(eval_bn_sums),
        "global_steps": [int(r["global_step"]) for r in run.reports],
        "bad_videos": max(r["bad_videos"] for r in run.reports),
        "videos_tried": max(r["videos_tried"] for r in run.reports),
        # Median over the step windows but the first (warm-up); a window leaves out checkpoint saves.
        "clips_per_s": statistics.median(r["clips_per_s"] for r in steps[1:]) if len(steps) > 1 else None,
        "test_video_top1": run.reports[-1].get("test_video_top1"),
        **export_check(trainer, weights, run.folder),
    }


def worker(rank: int, args: argparse.Namespace, port: int) -> None:
    """One rank: trains an epoch, restores in a fresh Trainer and trains another, then checks."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
    if args.device == "cuda":
        torch.cuda.set_device(rank)
    else:  # ranks share the CPU cores, as Ray gives each worker its CPUs (OMP_NUM_THREADS)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world_size))
    # NCCL alone on GPUs: a collective on a CPU tensor fails here as it would in a Ray job.
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", rank=rank, world_size=args.world_size)
    try:
        datasets, folder = synthetic_datasets(args), Path(args.folder)
        found = {}
        for phase, epochs in (("first", 1), ("resumed", 2)):  # the second restores the first's checkpoint
            with recorded_collectives() as calls:
                trainer = Trainer(harness_config(args, folder, epochs), LocalRun(folder, rank), datasets)
                eval_bn_sums = watch_eval_batch_norm(trainer.engine.module)
                trainer.fit()
            found[phase] = checks(trainer, trainer.run, eval_bn_sums, calls)
        found["resumed_from_step"] = found["resumed"]["global_steps"][0] - args.log_every
        if args.device == "cuda":
            found["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if rank == 0:
            Path(args.output).write_text(json.dumps({"args": vars(args), **found}, indent=2, default=str))
    finally:
        dist.destroy_process_group()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--world-size", type=int, default=1, help="ranks (GPUs on cuda)")
    parser.add_argument("--model", default="oct_i3d_r50")
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--size", type=int, default=224, help="crop size")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="clips per rank and step")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per epoch")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=0)
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    parser.add_argument("--memory-format", choices=["contiguous", "channels_last"], default="contiguous")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--data-workers", type=int, default=0)
    parser.add_argument("--bad-videos", type=int, default=0, help="training videos that fail to decode")
    parser.add_argument("--folder", required=True, help="checkpoints and weights (a new folder)")
    parser.add_argument("--output", required=True, help="JSON results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with socket.socket() as sock:  # a free port for the process group's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.perf_counter()
    mp.spawn(worker, args=(args, port), nprocs=args.world_size)
    result = json.loads(Path(args.output).read_text())
    result["wall_s"] = time.perf_counter() - started
    Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
