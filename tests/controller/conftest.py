"""Fixtures of the controller tests: the small gated profile (fleet "sel") on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.controller.gated_profile import write_gated_profile


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The gated profile's (profile path, gate path), trained once per test module."""
    return write_gated_profile(tmp_path_factory.mktemp("gated"))
