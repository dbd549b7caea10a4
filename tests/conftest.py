"""Fixtures shared by several test modules, each made once per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterator

import pytest


@pytest.fixture(scope="session")
def trained_export(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A tiny trained run and its exports (tests/test_export.py: make_run), shared by the export
    tests and the property test over the tools that read a model (tests/test_outputs_property_tools.py).
    Tests read it only; one that changes it works on a copy."""
    from tests.test_export import make_run

    return make_run(tmp_path_factory.mktemp("export"))


#: the variables :func:`hytrec_torchrec.runtime.distributed.init_distributed` sets when a tool runs
#: in the test process; a subprocess started later would inherit them (and a port still held by
#: the test process's group: EADDRINUSE)
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def _restore_distributed_env() -> Iterator[None]:
    """Put the process-group variables back as they were before each test."""
    before = {key: os.environ.get(key) for key in _DIST_ENV}
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
