"""What every benchmark script shares: the machine's name and its section of BENCHMARKS.md."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``) and the widest vector instructions PyTorch uses
    on it, e.g. "Intel(R) Xeon(R) Processor (AVX512)". Machines of one kind report the same model
    name with different instruction sets ("AMD EPYC" with and without AVX-512), and the speed of
    the split channel groups depends on the vector width."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def machine_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    threads = torch.get_num_threads()
    return f"{cpu_model()}, {threads} thread" + "s" * (threads > 1)


def write_section(path: Path, title: str, body: str) -> None:
    """Replace (or append) the section headed ``title`` in ``path``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")
