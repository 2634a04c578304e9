"""Fixtures shared by several test files."""
import random

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


@pytest.fixture
def fuzz_cases():
    """fuzz_cases(valid, n, max_flips, max_random) -> seeded broken variants of the bytes `valid`: n random
    byte strings (up to max_random long), n truncations of valid, n copies with 1..max_flips bytes
    changed, and JSON nested 100 000 deep. The same cases at every run (seed 0)."""
    def cases(valid: bytes, n: int, max_flips: int, max_random: int) -> list:
        rng = random.Random(0)
        out = [bytes(rng.randrange(256) for _ in range(rng.randrange(max_random))) for _ in range(n)]
        out += [valid[:rng.randrange(len(valid))] for _ in range(n)]
        for _ in range(n):
            flipped = bytearray(valid)
            for _ in range(rng.randrange(1, max_flips + 1)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            out.append(bytes(flipped))
        return out + [b"[" * 100_000 + b"]" * 100_000]
    return cases
