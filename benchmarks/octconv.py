"""Is the saving real? Forward + backward time and activation memory of Oct-I3D-R50 against alpha = 0.

All alphas are measured side by side in one run, on the same input, interleaved
round by round so that drift of the machine (thermal, other load) hits every alpha
alike; in each round a model runs two steps and the second is timed (the first
after a switch re-faults the memory the allocator gave back), and the reported time
is the median of the rounds. Memory is the activation
memory that training holds between forward and backward: on CPU the bytes of the
distinct tensors autograd saves for the backward pass (deterministic), on GPU the
peak allocated memory above the model's own parameters and gradients.

    python benchmarks/octconv.py                    # CPU fp32, writes BENCHMARKS.md
    python benchmarks/octconv.py --device cuda      # GPU bf16 (channels-last where it is faster)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Dict, List

import torch

from _report import machine_name, write_section
from octvideo.models import build_model
from octvideo.profile import profile_model

ROOT = Path(__file__).resolve().parents[1]


def saved_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum().backward()
    return sum(seen.values())


def gpu_peak_activation_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = model(x)
    peak_forward = torch.cuda.max_memory_allocated() - base
    out.sum().backward()
    model.zero_grad(set_to_none=True)
    return peak_forward


def step(model: torch.nn.Module, x: torch.Tensor, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(x).sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


LAYOUTS = {"channels-last": torch.channels_last_3d, "contiguous": torch.contiguous_format}


def run(args: argparse.Namespace, layout: str) -> List[dict]:
    torch.manual_seed(0)
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fmt = LAYOUTS[layout]
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=fmt)
    models = {}
    rows = []
    for alpha in args.alphas:
        model = build_model("oct_i3d_r50", alpha=alpha, num_classes=400)
        macs = profile_model(model, x[:1].float().cpu().contiguous()).total_macs
        models[alpha] = model.to(device=device, dtype=dtype, memory_format=fmt).train()
        memory = (gpu_peak_activation_bytes if device == "cuda" else saved_activation_bytes)(models[alpha], x)
        rows.append({"alpha": alpha, "macs": macs * args.batch, "memory": memory, "times": []})
        step(models[alpha], x, device)  # warm-up: allocator, kernel selection
    for _ in range(args.rounds):
        for row in rows:
            # The first step after switching models pays for re-faulting the allocator's pages
            # (glibc returns large blocks to the OS); time the second, steady-state one.
            step(models[row["alpha"]], x, device)
            row["times"].append(step(models[row["alpha"]], x, device))
    base = rows[0]
    for row in rows:
        row["time"] = statistics.median(row["times"])
        row["time_ratio"] = row["time"] / base["time"]
        row["mac_ratio"] = row["macs"] / base["macs"]
        row["memory_ratio"] = row["memory"] / base["memory"]
    return rows


def table(rows: List[dict], args: argparse.Namespace) -> str:
    lines = [
        "| alpha | GMACs | time (s) | time ratio | MAC ratio | time ratio / MAC ratio | activation MiB | memory ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['alpha']:g} | {r['macs'] / 1e9:.1f} | {r['time']:.3f} | {r['time_ratio']:.3f} | "
            f"{r['mac_ratio']:.3f} | {r['time_ratio'] / r['mac_ratio']:.3f} | {r['memory'] / 2**20:.0f} | "
            f"{r['memory_ratio']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.125, 0.25, 0.5, 0.75])
    parser.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 16 on GPU")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layout", choices=[*LAYOUTS, "both"], default="both",
                        help="memory layout of activations; 'both' measures each, one after the other")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.alphas[0] != 0.0:
        args.alphas.insert(0, 0.0)
    args.batch = args.batch or (16 if args.device == "cuda" else 2)
    layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]

    precision = "bf16" if args.device == "cuda" else "fp32"
    setup = (
        f"Machine: {machine_name(args.device)}; torch {torch.__version__}. oct_i3d_r50, batch {args.batch} x "
        f"{args.frames}x{args.size}x{args.size}, {precision}, forward + backward, median of {args.rounds} "
        "interleaved rounds (second of two steps per round) after a warm-up. MACs from `torch.utils.flop_counter`; activation memory = "
        + ("peak allocated in forward." if args.device == "cuda" else "bytes autograd saves for backward.")
    )
    print(setup)
    body = [setup]
    baseline_times = {}
    for layout in layouts:
        rows = run(args, layout)
        baseline_times[layout] = rows[0]["time"]
        result = f"{layout}:\n\n{table(rows, args)}"
        half = next((r for r in rows if r["alpha"] == 0.5), None)
        if half:
            result += (
                f"\n\nAt alpha = 0.5 ({layout}): time ratio {half['time_ratio']:.3f} = "
                f"{half['time_ratio'] / half['mac_ratio']:.2f} x the MAC ratio {half['mac_ratio']:.3f} "
                f"(goal: at most 1.10 x); activation memory {half['memory_ratio']:.3f} of alpha = 0 (goal: at most 0.70)."
            )
        print(result)
        body.append(result)
    if len(layouts) > 1:
        fastest = min(baseline_times, key=baseline_times.get)
        note = f"The plain network (alpha = 0) runs fastest {fastest}."
        print(note)
        body.append(note)
    if not args.no_write:
        title = f"Oct-I3D-R50 forward + backward, {args.device.upper()} {precision}"
        command = "python benchmarks/octconv.py" + (" --device cuda" if args.device == "cuda" else "")
        write_section(args.output, title, "\n\n".join(body) + f"\n\nReproduce: `{command}`")


if __name__ == "__main__":
    main()
