"""Shared test helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

# The reference checkpoints and images live next to the project: <root>/../shared/data (never committed).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared reference data not found at {SHARED_DATA}"
)
