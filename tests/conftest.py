"""Shared fixtures. JAX stays in float32 by default; tests that need float64 use the
``x64`` fixture, which enables it only for their duration."""

import jax
import pytest


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def examples_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "examples"
