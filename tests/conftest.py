"""Fixtures shared by several test modules, each made once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest


@pytest.fixture(scope="session")
def trained_export(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A tiny trained run and its exports (tests/test_export.py: make_run), shared by the export
    tests and the property test over the tools that read a model (tests/test_outputs_property_tools.py).
    Tests read it only; one that changes it works on a copy."""
    from tests.test_export import make_run

    return make_run(tmp_path_factory.mktemp("export"))
