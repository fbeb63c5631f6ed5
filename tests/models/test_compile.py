"""Octave networks compile as one graph (forward and backward), so torch.compile neither splits
them per layer nor recompiles per block shape (``fullgraph=True`` raises on any graph break).
Graph capture only (``aot_eager``): what the fused octave functions must allow; speed is the
benchmark's business."""

from __future__ import annotations

import pytest
import torch

from octvideo.models import build_model


@pytest.mark.parametrize("name", ["oct_i3d_r18", "oct_slowfast_r14"])
def test_an_octave_network_compiles_as_one_graph_for_training(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, alpha=0.5, width=8, num_classes=3, dropout=0.0)
    clip = torch.randn(2, 3, 8, 32, 32)
    inputs = [clip[:, :, ::4], clip] if name.startswith("oct_slowfast") else clip
    expected = model(inputs)
    expected.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    logits = compiled(inputs)
    logits.sum().backward()
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    for grad, eager in zip((p.grad for p in model.parameters()), eager_grads):
        torch.testing.assert_close(grad, eager, rtol=1e-3, atol=1e-5)
