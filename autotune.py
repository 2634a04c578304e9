"""Fast paths that depend on the machine, chosen by timing them on it (as cuDNN's benchmark mode does).

Not MusicGen, and not needed to read it: each operation tuned here has a plain form in the model
modules, and `ENABLED = False` runs the plain forms everywhere. Some exact rewrites of one operation are
faster on one CPU and slower on another. A decoding step at the real size multiplies two rows (guidance's
batch) by every weight; with a row-major W, x·Wᵀ and (W·xᵀ)ᵀ read the same bytes in another order, and
which order a CPU's kernels stream faster depends on its vector units and on the dtype (NOTES.md,
"Decoding on any CPU"). So nothing here is decided in advance:

    the first call of a kind (its key: operation, dtype, shape) times every candidate form on the
    call's own inputs, alternating, best of a few rounds; the fastest is kept for the rest of the
    process, and every later call of that key runs it without timing.

Two kinds of choice are made this way: the form of an expression (x·Wᵀ or (W·xᵀ)ᵀ; half-precision
attention in its dtype or in float32) and the library that runs it (`without_onednn`: torch hands some
CPU operations to oneDNN, whose kernels win on large tensors but pay a fixed cost of several µs a call,
more than the work itself on a decoding step's small ones). Only inference is tuned (autograd off:
generation, evaluation); training takes the plain forms. Every candidate computes what the plain form
computes (tests/test_fast_paths.py: each form, forced, gives the plain form's tokens in float32).
`FORCED` pins an operation's form by name; `decisions()` reports what was measured and chosen
(experiments/benchmark.py prints it).
"""
import time

import torch

ENABLED = True
FORCED = {}        # {operation: candidate name}, e.g. {"linear": "(W·xᵀ)ᵀ"}: no timing, that form (tests)
ROUNDS = 5         # timing rounds per decision, best kept
MIN_SECONDS = 2e-4  # a timed round repeats the call until it lasts this long (one call may be a few µs)
_decisions = {}    # key -> {"choice": name, "seconds": {name: best seconds per call}}


def choose(key: tuple, candidates: dict, *args) -> str:
    """The name of the form to run for `key` = (operation, ...): the plain one (the first of
    `candidates`, {name: fn(*args)}) when disabled or while autograd records (training: a run's numbers
    must not depend on a timing, and its shapes are not a decoding step's), a forced one, or the
    fastest, timed now on `args` if this key is new. The candidates must not change their arguments."""
    if not ENABLED:
        return next(iter(candidates))
    forced = FORCED.get(key[0])
    if forced is not None:
        return forced
    if torch.is_grad_enabled():
        return next(iter(candidates))
    decision = _decisions.get(key)
    if decision is None:
        decision = _decisions[key] = measure(candidates, *args)
    return decision["choice"]


def measure(candidates: dict, *args) -> dict:
    """Best seconds per call of each candidate over ROUNDS alternating rounds (a shared machine's speed
    drifts; alternating makes every form see the same drift), after one warm-up call each."""
    repeats = {}
    for name, fn in candidates.items():
        began = time.perf_counter()
        fn(*args)  # warm-up: the first call may allocate, or pick a kernel
        repeats[name] = max(1, int(MIN_SECONDS / max(time.perf_counter() - began, 1e-7)))
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(ROUNDS):
        for name, fn in candidates.items():
            began = time.perf_counter()
            for _ in range(repeats[name]):
                fn(*args)
            best[name] = min(best[name], (time.perf_counter() - began) / repeats[name])
    return {"choice": min(best, key=best.get), "seconds": best}


def without_onednn(fn):
    """`fn` run with oneDNN (MKL-DNN) switched off for the call, so torch takes its own (ATen) CPU kernel."""
    def call(*args):
        if not torch.backends.mkldnn.enabled:
            return fn(*args)
        torch.backends.mkldnn.enabled = False
        try:
            return fn(*args)
        finally:
            torch.backends.mkldnn.enabled = True
    return call


def decisions() -> dict:
    """{key: {"choice": name, "seconds": {name: seconds per call}}} of every choice made so far."""
    return dict(_decisions)


def reset():
    """Forget every decision (the next call of each key measures again)."""
    _decisions.clear()
