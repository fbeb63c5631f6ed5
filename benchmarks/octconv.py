"""Is the saving real? Forward + backward time and activation memory of Oct-I3D-R50 against alpha = 0.

All alphas are measured side by side in one run, on the same input, interleaved
round by round so that drift of the machine (thermal, other load) hits every alpha
alike; in each round a model runs two steps and the second is timed (the first
after a switch re-faults the memory the allocator gave back), and the reported time
is the median of the rounds. Before that, each model runs WARMUP steps (allocator,
cuDNN's algorithm search, compilation); the first one's time is kept: for a compiled
model, that is the compilation time. Memory is the activation memory of training,
measured after the warm-up: on CPU the bytes of the distinct tensors autograd saves
for the backward pass (deterministic), on GPU the peak allocated during a forward +
backward above what was allocated before it (the total peak is reported too).

With ``--compile both`` (the default on GPU) eager and ``torch.compile``d models
(inductor, default mode, one graph per network: a model that does not compile into
one is reported, not timed) run side by side. Compiling can take minutes per model,
so compiled models run in the first layout measured only (channels-last,
unless ``--layout contiguous``) and at ``--compiled-alphas`` (default: 0 and 0.5).

    python benchmarks/octconv.py                    # CPU fp32, eager, writes BENCHMARKS.md
    python benchmarks/octconv.py --device cuda      # GPU bf16, eager and compiled
    python benchmarks/octconv.py --device cuda --no-write --json results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from torch._dynamo.exc import TorchDynamoException

from _report import machine_name, write_section
from octvideo.models import build_model
from octvideo.profile import profile_model

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"channels-last": torch.channels_last_3d, "contiguous": torch.contiguous_format}
MODES = ("eager", "compiled")
WARMUP = 3  # steps before measuring; a compiled model compiles in the first


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
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def gpu_peak_bytes(model: torch.nn.Module, x: torch.Tensor) -> Tuple[int, int]:
    """Peak allocated during one forward + backward above what was allocated before it, and the total peak."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model(x).sum().backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    model.zero_grad(set_to_none=True)
    return peak - base, peak


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


def run(args: argparse.Namespace, layout: str, modes: List[str]) -> List[dict]:
    """One row per alpha and mode, ratios against alpha = 0 in the same mode; a model that
    fails to compile gets a row with its ``error`` instead of measurements."""
    torch.manual_seed(0)
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fmt = LAYOUTS[layout]
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device, dtype=dtype)
    x = x.contiguous(memory_format=fmt)
    runners: Dict[Tuple[float, str], torch.nn.Module] = {}
    rows, failed = [], []
    for alpha in args.alphas:
        model = build_model("oct_i3d_r50", alpha=alpha, num_classes=400)
        macs = profile_model(model, x[:1].float().cpu().contiguous()).total_macs
        model = model.to(device=device, dtype=dtype, memory_format=fmt).train()
        for mode in modes:
            if mode == "compiled" and alpha not in args.compiled_alphas:
                continue
            row = {"alpha": alpha, "layout": layout, "mode": mode, "macs": macs * args.batch}
            runner = model
            if mode == "compiled":
                runner = torch.compile(model, backend=args.compile_backend, fullgraph=True)
            try:
                row["first_step"] = step(runner, x, device)
            except TorchDynamoException as error:
                if alpha == 0.0:
                    raise  # the plain network is every ratio's baseline
                print(f"alpha = {alpha:g}, {layout}: torch.compile failed:\n{error}", file=sys.stderr)
                failed.append({**row, "error": str(error)})
                continue
            for _ in range(WARMUP - 1):
                step(runner, x, device)
            if device == "cuda":
                row["memory"], row["peak_memory"] = gpu_peak_bytes(runner, x)
            else:
                row["memory"], row["peak_memory"] = saved_activation_bytes(runner, x), None
            runners[alpha, mode] = runner
            rows.append({**row, "times": []})
    for _ in range(args.rounds):
        for row in rows:
            # The first step after switching models pays for re-faulting the allocator's pages
            # (glibc returns large blocks to the OS); time the second, steady-state one.
            runner = runners[row["alpha"], row["mode"]]
            step(runner, x, device)
            row["times"].append(step(runner, x, device))
    for row in rows:
        base = next(r for r in rows if r["mode"] == row["mode"])
        row["time"] = statistics.median(row["times"])
        row["time_ratio"] = row["time"] / base["time"]
        row["mac_ratio"] = row["macs"] / base["macs"]
        row["memory_ratio"] = row["memory"] / base["memory"]
    return rows + failed


def table(rows: List[dict]) -> str:
    gpu = rows[0]["peak_memory"] is not None
    lines = [
        "| alpha | GMACs | time (s) | time ratio | MAC ratio | time ratio / MAC ratio | activation MiB | memory ratio |"
        + (" peak MiB |" if gpu else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if gpu else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['alpha']:g} | {r['macs'] / 1e9:.1f} | {r['time']:.3f} | {r['time_ratio']:.3f} | "
            f"{r['mac_ratio']:.3f} | {r['time_ratio'] / r['mac_ratio']:.3f} | {r['memory'] / 2**20:.0f} | "
            f"{r['memory_ratio']:.3f} |" + (f" {r['peak_memory'] / 2**20:.0f} |" if gpu else "")
        )
    return "\n".join(lines)


def compiled_note(rows: List[dict], eager: List[dict]) -> str:
    """Compilation time of each compiled row, its time against its ``eager`` twin, and the failures."""
    eager_time = {r["alpha"]: r["time"] for r in eager}
    compiled = [r for r in rows if "error" not in r]
    alphas = " / ".join(f"{r['alpha']:g}" for r in compiled)
    seconds = " / ".join(f"{r['first_step']:.1f}" for r in compiled)
    note = f"Compiled, at alpha = {alphas}: compilation (the first step) {seconds} s"
    if eager_time:
        note += "; time against eager " + " / ".join(f"{r['time'] / eager_time[r['alpha']]:.3f}" for r in compiled)
    failed = [f"{r['alpha']:g}" for r in rows if "error" in r]
    if failed:
        note += f". Not compiled into one graph, so not timed compiled: alpha = {', '.join(failed)}"
    return note + "."


def caption(layout: str, mode: str, args: argparse.Namespace) -> str:
    return layout if args.compile == "eager" else f"{layout}, {mode}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--alphas", type=float, nargs="+", default=None,
                        help="default: 0 0.125 0.25 0.5 0.75 on CPU, 0 0.125 0.25 0.5 on GPU")
    parser.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 16 on GPU")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layout", choices=[*LAYOUTS, "both"], default="both",
                        help="memory layout of activations; 'both' measures each, one after the other")
    parser.add_argument("--compile", choices=[*MODES, "both"], default=None,
                        help="eager models, torch.compile'd ones, or both side by side; default: eager on CPU, "
                             "both on GPU")
    parser.add_argument("--compiled-alphas", type=float, nargs="+", default=[0.0, 0.5],
                        help="the alphas also measured compiled (alpha = 0 always is); default: 0 0.5")
    parser.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)  # aot_eager: quick checks
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every row (times, ratios, memory) here, as JSON")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.alphas = args.alphas or ([0.0, 0.125, 0.25, 0.5] if cuda else [0.0, 0.125, 0.25, 0.5, 0.75])
    if args.alphas[0] != 0.0:
        args.alphas.insert(0, 0.0)
    args.compiled_alphas = {0.0, *args.compiled_alphas}
    args.batch = args.batch or (16 if cuda else 2)
    args.compile = args.compile or ("both" if cuda else "eager")
    modes = list(MODES) if args.compile == "both" else [args.compile]
    layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]
    if cuda:
        torch.backends.cudnn.benchmark = True

    precision = "bf16" if cuda else "fp32"
    setup = (
        f"Machine: {machine_name(args.device)}; torch {torch.__version__}. oct_i3d_r50, batch {args.batch} x "
        f"{args.frames}x{args.size}x{args.size}, {precision}, forward + backward, median of {args.rounds} "
        f"interleaved rounds (second of two steps per round) after {WARMUP} warm-up steps. MACs from "
        "`torch.utils.flop_counter`; activation memory = "
        + ("peak allocated during a forward + backward above the memory allocated before it; peak = total peak "
           "allocated." if cuda else "bytes autograd saves for backward.")
    )
    if "compiled" in modes:
        setup += (
            f" Compiled: `torch.compile` ({args.compile_backend}, default mode, one graph), {layouts[0]} only "
            "(compiling can take minutes per model)."
        )
    print(setup)
    body = [setup]
    rows: List[dict] = []
    for layout in layouts:
        layout_modes = [mode for mode in modes if mode == "eager" or layout == layouts[0]]
        if not layout_modes:
            continue
        layout_rows = run(args, layout, layout_modes)
        rows += layout_rows
        for mode in layout_modes:
            mode_rows = [r for r in layout_rows if r["mode"] == mode]
            measured = [r for r in mode_rows if "error" not in r]
            label = caption(layout, mode, args)
            result = f"{label}:\n\n{table(measured)}"
            half = next((r for r in measured if r["alpha"] == 0.5), None)
            if half:
                result += (
                    f"\n\nAt alpha = 0.5 ({label}): time ratio {half['time_ratio']:.3f} = "
                    f"{half['time_ratio'] / half['mac_ratio']:.2f} x the MAC ratio {half['mac_ratio']:.3f} "
                    f"(goal: at most 1.10 x); activation memory {half['memory_ratio']:.3f} of alpha = 0 (goal: at most 0.70)."
                )
            if mode == "compiled":
                result += "\n\n" + compiled_note(mode_rows, [r for r in layout_rows if r["mode"] == "eager"])
            print(result)
            body.append(result)
    baselines = [r for r in rows if r["alpha"] == 0.0]
    if len(baselines) > 1:
        fastest = min(baselines, key=lambda r: r["time"])
        note = f"The plain network (alpha = 0) runs fastest {caption(fastest['layout'], fastest['mode'], args)}."
        print(note)
        body.append(note)
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")
    if not args.no_write:
        title = f"Oct-I3D-R50 forward + backward, {args.device.upper()} {precision}"
        command = "python benchmarks/octconv.py" + (" --device cuda" if cuda else "")
        write_section(args.output, title, "\n\n".join(body) + f"\n\nReproduce: `{command}`")


if __name__ == "__main__":
    main()
