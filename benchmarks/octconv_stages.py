"""Where an octave network's time goes at batch-1 inference: per stage, and convolutions against the rest.

``benchmarks/octconv.py`` gives the whole network's time ratio; this script says where the
ratio comes from. For each alpha against alpha = 0, side by side in one run (interleaved rounds,
the second of two steps timed, medians as in octconv.py):

* per stage (stem, layer1..4, ...): time ratio, MAC ratio (``torch.utils.flop_counter``) and their
  quotient, timed with forward hooks;
* per kind of operator, from ``torch.profiler`` (median of 3 interleaved steps): the
  convolutions' time ratio (what MACs predict) and every other operator's (batch norm, adds, ReLU, the octave pooling and upsampling:
  memory-bound work that scales with the activations, not with MACs).

    python benchmarks/octconv_stages.py                 # 1 thread, channels-last, alphas 0 0.125 0.5
    python benchmarks/octconv_stages.py --threads 2 --layout contiguous --no-write
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _report import machine_name, write_section
from torch.profiler import ProfilerActivity, profile
from torch.utils.hooks import RemovableHandle

from octvideo.models import build_model
from octvideo.profile import profile_model

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"channels-last": torch.channels_last_3d, "contiguous": torch.contiguous_format}
PROFILED_ROUNDS = 3
WHOLE = "whole network"
CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::slow_conv3d_forward", "aten::_slow_conv2d_forward")


def timed_stages(model: torch.nn.Module, times: dict[str, list[float]]) -> list[RemovableHandle]:
    """Forward hooks that append each child's forward time (seconds) to ``times[name]``."""
    started: dict[str, float] = {}
    handles = []
    for name, child in model.named_children():
        handles.append(child.register_forward_pre_hook(
            lambda _m, _a, name=name: started.__setitem__(name, time.perf_counter())))
        handles.append(child.register_forward_hook(
            lambda _m, _a, _o, name=name: times.setdefault(name, []).append(time.perf_counter() - started[name])))
    return handles


def operator_split(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Seconds in convolutions and in every other operator, in one profiled step."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONVOLUTIONS) / 1e6
    return conv, sum(e.self_cpu_time_total for e in events) / 1e6 - conv


def median_split(splits: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(s[0] for s in splits), statistics.median(s[1] for s in splits)


def measure(args: argparse.Namespace) -> tuple[list[str], dict[float, dict]]:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    fmt = LAYOUTS[args.layout]
    x = torch.randn(1, 3, args.frames, args.size, args.size).contiguous(memory_format=fmt)
    models, steps, results = {}, {}, {}
    for alpha in args.alphas:
        model = build_model("oct_i3d_r50", alpha=alpha, num_classes=400)
        results[alpha] = {"macs": profile_model(model, x.contiguous()).stage_macs}
        models[alpha] = model.to(memory_format=fmt).eval()
    with torch.no_grad():
        for model in models.values():
            for _ in range(3):
                model(x)
        handles = [h for alpha, model in models.items() for h in timed_stages(model, steps.setdefault(alpha, {}))]
        for _ in range(args.rounds):
            for model in models.values():
                model(x)
                model(x)  # the second step of each round is the one kept
        for handle in handles:
            handle.remove()
        for alpha, times in steps.items():
            results[alpha]["times"] = {name: statistics.median(t[1::2]) for name, t in times.items()}
        splits: dict[float, list] = {alpha: [] for alpha in models}
        for _ in range(PROFILED_ROUNDS):
            for alpha, model in models.items():
                model(x)
                splits[alpha].append(operator_split(model, x))
        for alpha, split in splits.items():
            results[alpha]["operators"] = median_split(split)
    return [name for name, _ in models[args.alphas[0]].named_children()], results


def stage_value(result: dict, key: str, stage: str) -> float:
    """``result[key]`` (times or MACs) of one stage, or their sum for the whole network."""
    values = result[key]
    return sum(values.values()) if stage == WHOLE else values.get(stage, 0.0)


def report(names: list[str], results: dict[float, dict], label: str) -> str:
    base = results[0.0]
    header = "| stage | alpha 0 (ms) | " + " | ".join(
        f"alpha {a:g}: ms, time ratio, MAC ratio, time / MAC" for a in results if a) + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for stage in names + [WHOLE]:
        base_time, base_macs = stage_value(base, "times", stage), stage_value(base, "macs", stage)
        if base_time < 1e-3:
            continue  # dropout, an identity: nothing to see
        cells = [stage, f"{base_time * 1e3:.1f}"]
        for alpha, result in results.items():
            if alpha:
                seconds, macs = stage_value(result, "times", stage), stage_value(result, "macs", stage)
                ratio = seconds / base_time
                mac_cells = f"{macs / base_macs:.3f}, {ratio * base_macs / macs:.2f}" if base_macs else "-, -"
                cells.append(f"{seconds * 1e3:.1f}, {ratio:.3f}, {mac_cells}")
        lines.append("| " + " | ".join(cells) + " |")
    conv0, other0 = base["operators"]
    split = "; ".join(
        f"alpha {a:g}: convolutions {r['operators'][0] / conv0:.3f} of alpha 0's, other operators "
        f"{r['operators'][1] / other0:.3f}" for a, r in results.items() if a)
    return (f"{label}:\n\n" + "\n".join(lines) + f"\n\nProfiled (median of {PROFILED_ROUNDS} interleaved steps "
            f"each): alpha 0 spends {conv0 * 1e3:.0f} ms in convolutions and {other0 * 1e3:.0f} ms in other "
            f"operators; {split}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.125, 0.5])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layout", choices=list(LAYOUTS), default="channels-last")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if 0.0 not in args.alphas:
        parser.error("--alphas must include 0, the baseline")
    args.alphas = sorted(args.alphas)
    torch.set_num_threads(args.threads)
    label = (f"inference, batch 1, {args.layout}, {args.frames}x{args.size}x{args.size}, eager "
             f"({machine_name('cpu')})")
    names, results = measure(args)
    text = report(names, results, label)
    print(text)
    if not args.no_write:
        write_section(args.output, f"Oct-I3D-R50 by stage, CPU fp32: {machine_name('cpu').rsplit(',', 1)[0]}",
                      text + "\n\nReproduce: `python benchmarks/octconv_stages.py`")


if __name__ == "__main__":
    main()
