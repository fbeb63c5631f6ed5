"""The GPU acceptance run's results in one file: ``python benchmarks/gpu_summary.py OUT`` reads
what ``benchmarks/gpu_acceptance.sh`` left in ``OUT`` (steps.txt, harness_*.json, octconv.json,
gpu.txt), writes ``OUT/gpu_acceptance.json`` and prints a Markdown section for BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: Harness checks that must hold in every phase of every harness run.
CHECKS = ("batch_norm_fp32", "eval_bn_sums_equal_across_ranks", "export_all_fp32", "export_equals_optimizer_weights")


def harness_row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    args, first = result["args"], result["first"]
    clips_per_s = first["clips_per_s"]
    failed = [f"{phase}.{check}" for phase in ("first", "resumed") for check in CHECKS if not result[phase][check]]
    if set(result["first"]["collective_devices"]) - {args["device"], "object"}:
        failed.append(f"collectives off {args['device']}")
    if result["resumed_from_step"] != args["steps"]:
        failed.append("restore")
    return {
        "run": name, "alpha": args["alpha"], "zero_stage": args["zero_stage"],
        "steps_per_s": clips_per_s / (args["batch"] * args["world_size"]), "clips_per_s": clips_per_s,
        "peak_gpu_memory_gib": result.get("peak_gpu_memory_gib"),
        "bf16_representable_share": first["export_bf16_representable_share"],
        "test_video_top1": result["resumed"]["test_video_top1"], "failed_checks": failed,
    }


def main(out: Path) -> None:
    steps = {name: int(rc) for name, rc, _ in (line.split() for line in (out / "steps.txt").read_text().splitlines())}
    runs = [harness_row(path.stem.removeprefix("harness_"), json.loads(path.read_text()))
            for path in sorted(out.glob("harness_*.json"))]
    by_name = {row["run"]: row for row in runs}
    summary: dict[str, Any] = {"gpu": (out / "gpu.txt").read_text().strip(), "steps": steps, "harness": runs}
    if "zero0_alpha0" in by_name and "zero0_alpha0.5" in by_name:
        summary["harness_time_ratio_alpha0.5_vs_0"] = by_name["zero0_alpha0"]["steps_per_s"] / by_name["zero0_alpha0.5"]["steps_per_s"]
    if (out / "octconv.json").exists():
        rows = json.loads((out / "octconv.json").read_text())["rows"]
        summary["octconv_time_ratio_alpha0.5"] = {
            f"{r['layout']}, {r['mode']}": r["time_ratio"] for r in rows if r["alpha"] == 0.5 and "time_ratio" in r
        }
    summary["passed"] = all(rc == 0 for rc in steps.values()) and not any(row["failed_checks"] for row in runs)
    (out / "gpu_acceptance.json").write_text(json.dumps(summary, indent=1) + "\n")

    print(f"GPU: {summary['gpu']}\n")
    print("| harness run | steps/s | clips/s | peak GPU memory (GiB) | export bf16-representable | failed checks |")
    print("|---|---|---|---|---|---|")
    for row in runs:
        memory = f"{row['peak_gpu_memory_gib']:.1f}" if row["peak_gpu_memory_gib"] is not None else "-"
        print(f"| {row['run']} | {row['steps_per_s']:.2f} | {row['clips_per_s']:.1f} | {memory} | "
              f"{row['bf16_representable_share']:.2f} | {', '.join(row['failed_checks']) or 'none'} |")
    for key in ("harness_time_ratio_alpha0.5_vs_0", "octconv_time_ratio_alpha0.5"):
        if key in summary:
            print(f"\n{key}: {summary[key]}")
    print(f"\nsteps (exit status): {steps}; passed: {summary['passed']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
