"""autotune.py: the fastest candidate is chosen, once per key; disabled, or while autograd records, means
the plain (first) form; FORCED pins a form by name; without_onednn switches oneDNN off for the call alone."""
import time

import pytest
import torch

import autotune


pytestmark = pytest.mark.usefixtures("fresh_autotune")  # tests/conftest.py


def candidates(calls):
    """A plain form that is slow (1 ms) and a fast one, each counting its calls."""
    def slow(x):
        calls.append("slow")
        time.sleep(1e-3)
        return x

    def fast(x):
        calls.append("fast")
        return x
    return {"slow": slow, "fast": fast}


@torch.inference_mode()
def test_the_faster_form_is_chosen_once_per_key_and_reported():
    calls = []
    forms = candidates(calls)
    assert autotune.choose(("op", 1), forms, 0) == "fast"
    timed = len(calls)
    assert calls.count("slow") == 1 + autotune.ROUNDS  # warm-up, then one call a round (1 ms ≥ MIN_SECONDS)
    assert autotune.choose(("op", 1), forms, 0) == "fast" and len(calls) == timed  # cached: no timing again
    decision = autotune.decisions()[("op", 1)]
    assert decision["choice"] == "fast" and decision["seconds"]["slow"] > 5 * decision["seconds"]["fast"]
    autotune.choose(("op", 2), forms, 0)  # another key is measured anew
    assert len(calls) > timed and len(autotune.decisions()) == 2
    autotune.reset()
    assert autotune.decisions() == {}


def test_disabled_or_training_takes_the_plain_form_and_forced_takes_the_named_one(monkeypatch):
    calls = []
    forms = candidates(calls)
    assert torch.is_grad_enabled()
    assert autotune.choose(("op",), forms, 0) == "slow" and calls == [] and autotune.decisions() == {}
    monkeypatch.setattr(autotune, "ENABLED", False)
    with torch.inference_mode():
        assert autotune.choose(("op",), forms, 0) == "slow" and calls == [] and autotune.decisions() == {}
    monkeypatch.setattr(autotune, "ENABLED", True)
    autotune.FORCED["op"] = "slow"
    assert autotune.choose(("op", 3), forms, 0) == "slow" and calls == []


def test_without_onednn_switches_it_off_for_the_call_alone():
    seen = []
    fn = autotune.without_onednn(lambda: seen.append(torch.backends.mkldnn.enabled))
    assert torch.backends.mkldnn.enabled
    fn()
    assert seen == [False] and torch.backends.mkldnn.enabled
    failing = autotune.without_onednn(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing()
    assert torch.backends.mkldnn.enabled  # restored on an error too
