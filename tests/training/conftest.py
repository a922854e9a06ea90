"""Fixtures for the training-side tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.fixture
def tiny() -> Callable[..., tuple]:
    """A tiny model + optimizer + scheduler for in-process tests."""
    import torch

    def make(seed: int = 0, hidden: int = 8) -> tuple:
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
        return model, opt, sched

    return make
