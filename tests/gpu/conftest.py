"""Tests that need a CUDA device; every one of them is skipped where there is none.

The GPU machine has torch and pytest but not ray, deepspeed, mlflow, av, moto or pytorchvideo:
nothing under this folder may import them.
"""

import pytest
import torch


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Runs before each test's fixtures, for the tests under this folder only (a conftest's scope)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
