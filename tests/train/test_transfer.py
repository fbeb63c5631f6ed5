"""Transfer learning: a small Oct-I3D pre-trained on four translation classes, fine-tuned on four
other motion classes from eight training videos each, beats the same network trained from
scratch with the same budget -- proof that ``load_pretrained`` carries what was learned.

The experiment is ``benchmarks/transfer.py``'s (see its docstring; its per-seed figures are in
BENCHMARKS.md), run here for seed 0 with its real data path; both curves are printed. The margin
asserted, ``TEST_MARGIN``, is far below the smallest one measured over the calibration seeds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from transfer import SETUP, TEST_MARGIN, run_transfer

CHANCE = 1 / len(SETUP.finetune_classes)


def test_a_pretrained_start_beats_scratch_on_new_classes(tmp_path_factory: pytest.TempPathFactory,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    lines = []
    result = run_transfer(tmp_path_factory.mktemp("transfer"), seed=0, log=lines.append)
    with capsys.disabled():
        print("\n" + "\n".join(f"  {line}" for line in lines)
              + f"\n  margin (pretrained - scratch, final epoch) {result.margin:+.2f}, asserted >= {TEST_MARGIN:.2f}")
    assert result.head.startswith("re-initialised"), result.head
    assert result.pretrain_top1 >= 0.6, result  # the pre-training learned its own classes
    assert result.pretrained >= result.scratch + TEST_MARGIN, result
    assert result.pretrained >= CHANCE + TEST_MARGIN, result
