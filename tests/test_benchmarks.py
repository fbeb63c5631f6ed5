"""The benchmark scripts stay runnable (tiny sizes; the figures themselves live in BENCHMARKS.md)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_octconv_benchmark_runs_and_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Other section\n\nkept\n")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "octconv.py"), "--size", "32", "--frames", "4",
           "--rounds", "1", "--alphas", "0", "0.25", "0.5", "--threads", "1", "--compile", "eager",
           "--output", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "## Other section\n\nkept" in text
    # Both regimes, both layouts, each table named with the CPU it ran on, the goals checked.
    for label in ("training, batch 2, channels-last, 2 threads", "training, batch 2, contiguous, 2 threads",
                  "inference, batch 1, channels-last, 1 thread", "inference, batch 1, contiguous, 1 thread"):
        assert f"{label}, eager (" in text
        assert f"At alpha = 0.5 ({label}, eager): time ratio" in text
    assert "| 0.5 |" in text and text.count("activation memory") >= 2 and "At alpha = 0.25: " in text
    # A second run replaces its own section (one per CPU model) rather than appending another.
    subprocess.run([*cmd, "--regime", "inference", "--layout", "channels-last"], capture_output=True, text=True,
                   timeout=300, check=True)
    assert out.read_text().count("## Oct-I3D-R50, CPU fp32: ") == 1


def run_benchmark(script: str, *args: str, output: Path) -> str:
    """Run ``benchmarks/<script>`` writing to ``output``; the file's text."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--output", str(output)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output.read_text()


def test_decode_benchmark_runs_and_writes_its_section(tmp_path):
    text = run_benchmark("decode.py", "--quick", "--gops", "250", "30", "--data", str(tmp_path / "videos"),
                         output=tmp_path / "BENCHMARKS.md")
    assert text.count("## Training-clip decoding, CPU") == 1
    contenders = ("octvideo", "octvideo, window strategy", "octvideo, S3 (moto)", "pytorchvideo",
                  "floor (PyAV decode only)")
    assert all(f"| {contender} |" in text for contender in contenders)
    assert "against pytorchvideo on the raw files" in text and "local-disk throughput" in text


def test_storage_latency_benchmark_runs_and_writes_its_section(tmp_path):
    text = run_benchmark("decode.py", "--storage-latency", "--quick", "--data", str(tmp_path / "videos"),
                         output=tmp_path / "BENCHMARKS.md")
    assert text.count("## Training clips from object storage at a distance, CPU") == 1
    for rtt in (0, 20, 50):
        assert f"| S3 + {rtt} ms RTT, fetched ahead |" in text and f"| S3 + {rtt} ms RTT, streamed (before) |" in text
    assert "Latency hidden at 20 ms RTT" in text and "Client overhead" in text


def test_clips_per_decode_benchmark_runs_and_writes_its_section(tmp_path):
    text = run_benchmark("decode.py", "--clips-per-decode", "--quick", "--data", str(tmp_path / "videos"),
                         output=tmp_path / "BENCHMARKS.md")
    assert text.count("## Several training clips per decode, CPU") == 1
    assert all(f"| {views} |" in text for views in ("1 x 1", "1 x 2", "2 x 2")) and "1 x 2 gives" in text

