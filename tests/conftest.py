"""Fixtures shared by several test files."""
import pytest

import autotune


@pytest.fixture
def fresh_autotune():
    """autotune.py's decisions and forced forms cleared before the test and after it: each test measures
    (or forces) its own choices and leaves none behind."""
    autotune.reset()
    yield
    autotune.FORCED.clear()
    autotune.reset()
