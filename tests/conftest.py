"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The reference checkpoints and images live next to the project: <root>/../shared/data (never committed).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared reference data not found at {SHARED_DATA}"
)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Torch on one thread for the whole suite: on two shared cores, two threads are many times slower whenever
    another job runs (measured), and the tiny test models gain nothing from a second one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
