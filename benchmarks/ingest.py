"""Training through DataLoader workers against training through Ray Data decode actors, side by side.

Two runs of the real training job (``prepare_job`` + ``run_job``: Ray Train, DeepSpeed, MLflow in
SQLite) on a local Ray with the same config but ``data.ingest``: one training worker with one CPU,
and one more CPU for decoding, either as one DataLoader worker process beside it
(``data.workers: 1``) or as one Ray Data decode actor (``data.decoders: 1``, ``{"CPU": 1}``).
Reported: the median over the reports after the first epoch of ``clips_per_s`` and
``data_wait_share`` (the trainer's own metrics), for two networks: width 16 at 112 px, where
decoding easily keeps up, and width 4 at 56 px, about three times faster, where it nearly does not.

What one machine can show: the cost of the Ray Data path (object store transfers, a pipeline and
its actors per epoch) at equal decoding CPUs. What it cannot: the point of the Ray Data path, more
decoding CPUs than the training node has, which needs more machines.

    python benchmarks/ingest.py                       # writes its section of BENCHMARKS.md
    python benchmarks/ingest.py --epochs 2 --no-write --json result.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import ray
from _report import cpu_model, write_section
from mlflow.tracking import MlflowClient

from octvideo.data import write_synthetic_kinetics
from octvideo.train.config import parse_config
from octvideo.train.job import prepare_job, run_job

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Training-clip ingest: DataLoader workers against Ray Data decode actors, CPU"
INGESTS = {"dataloader": {"workers": 1}, "ray_data": {"decoders": 1, "decoder_resources": {"CPU": 1}}}
REGIMES = {"width 16, 112 px": {"width": 16, "size": 112}, "width 4, 56 px": {"width": 4, "size": 56}}


def experiment(data: Path, folder: Path, ingest: str, epochs: int, width: int, size: int) -> dict[str, Any]:
    return {
        "model": {"name": "oct_i3d_r18", "alpha": 0.5, "width": width, "dropout": 0.0},
        "data": {
            "train_manifest": str(data / "train.csv"), "val_manifest": str(data / "val.csv"),
            "clip": {"num_frames": 8, "sampling_rate": 4, "train_short_side": [size, size + size // 4], "crop": size,
                     "eval_short_side": size, "eval_crop": size, "test_clips": 1, "test_crops": 1},
            "ingest": ingest, "prefetch_factor": 2, **INGESTS[ingest],
        },
        "optim": {"lr": 0.01, "epochs": epochs, "warmup_epochs": 0, "batch_size_per_worker": 4},
        "deepspeed": {"zero_stage": 0, "precision": "fp32"},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "checkpoint": {"storage_path": str(folder / "runs"), "name": f"{ingest}-{width}-{size}"},
        "tracking": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": "ingest", "log_every_steps": 1},
    }


def train(config: dict[str, Any], steps_per_epoch: int) -> dict[str, float]:
    """Run the job; its trainer metrics after the first epoch (medians)."""
    outcome = run_job(prepare_job(parse_config(config)))
    client = MlflowClient(config["tracking"]["tracking_uri"])

    def later(name: str) -> list[float]:
        return [m.value for m in client.get_metric_history(outcome.tracking_run_id, name) if m.step > steps_per_epoch]

    return {
        "clips_per_s": statistics.median(later("clips_per_s")),
        "data_wait_share": statistics.median(later("data_wait_share")),
    }


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| network | ingest | clips/s (median) | against DataLoader | data-wait share (median) |", "|---|---|---|---|---|"]
    for regime, by_ingest in results.items():
        base = by_ingest["dataloader"]["clips_per_s"]
        for ingest, r in by_ingest.items():
            lines.append(
                f"| {regime} | {ingest} | {r['clips_per_s']:.2f} | {r['clips_per_s'] / base:.2f}x | {r['data_wait_share']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 epochs of 16 videos, the small network only (a smoke test)")
    parser.add_argument("--videos-per-class", type=int, default=8)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    regimes = {name: shape for name, shape in REGIMES.items() if not args.quick or shape["width"] == 4}
    if args.quick:
        args.epochs, args.videos_per_class = 2, 4
    with tempfile.TemporaryDirectory(prefix="octvideo-ingest-") as tmp:
        folder = Path(tmp)
        counts = write_synthetic_kinetics(str(folder / "data"), classes=4, videos_per_class=args.videos_per_class,
                                          duration=3.0, width=426, height=320)
        steps_per_epoch = counts["train"] // 4
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        try:
            results = {
                regime: {ingest: train(experiment(folder / "data", folder, ingest, args.epochs, **shape), steps_per_epoch)
                         for ingest in INGESTS}
                for regime, shape in regimes.items()
            }
        finally:
            ray.shutdown()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not args.no_write:
        body = (
            f"Machine: {cpu_model()}, 2 vCPUs, a local Ray of 2 CPUs. One training worker (1 CPU) and one decoding CPU: "
            f"a DataLoader worker process, or a Ray Data decode actor. oct_i3d_r18 (alpha 0.5), batch 4, "
            f"8 frames 4 apart from 426x320 H.264 on local disk ({counts['train']} training videos), fp32, "
            f"{args.epochs} epochs; medians over the reports after the first epoch.\n\n{table(results)}\n\n"
            "What this machine cannot show: decoding on CPUs the training node does not have. Both paths here decode "
            "on the same 2 vCPUs as the training, so the comparison measures what the Ray Data path costs at equal "
            "decoding CPUs, not what more decode nodes give."
        )
        write_section(args.output, f"{TITLE}", body + f"\n\nReproduce: `python benchmarks/ingest.py --epochs {args.epochs}`")


if __name__ == "__main__":
    main()
