"""Exercise 19 (§4.1, training): the learning-rate schedule.

MusicGen trains with AdamW and "a cosine learning rate schedule with a warmup of 4000 steps" (§4.1);
both stages here use the same schedule: a linear warm-up to the peak rate, then a half cosine that
decays it to 10% of the peak at the last step, and stays there after it,

    lr(s) = lr · (s + 1) / W                                   for s < W   (step 0 already learns)
    lr(s) = lr · (0.1 + 0.9 · ½ (1 + cos(π · min(1, p))))      for s ≥ W,  p = (s − W) / max(1, S − W)

with W the warm-up steps and S the total steps. Write `cosine_lr(step, max_steps, warmup, lr)` in
stages.py; it returns the rate (a float) for the 0-based step `step`.
"""
import math

import stages
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=19, title="The learning-rate schedule", section="§4.1",
    blanks=[("stages.py", "cosine_lr")],
    hints=["Two branches: `if step < warmup: return lr * (step + 1) / warmup`, the cosine otherwise.",
           "The cosine's progress is measured from the end of the warm-up: p = (step − warmup) / max(1, max_steps − "
           "warmup), so p = 0 at the peak and p = 1 at the last step; clamp it with min(1.0, p).",
           "0.5 · (1 + cos(π p)) goes from 1 to 0; the floor is 10%: lr · (0.1 + 0.9 · 0.5 · (1 + cos(π p)))."],
)


def close(a, b):
    return isinstance(a, (int, float)) and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def check_linear_warmup():
    """Warm-up of 10 steps, peak 1: steps 0..9 give 0.1, 0.2, ..., 1.0."""
    got = [stages.cosine_lr(s, 100, 10, 1.0) for s in range(10)]
    expected = [(s + 1) / 10 for s in range(10)]
    if all(close(g, e) for g, e in zip(got, expected)):
        return
    if close(got[0], 0.0):
        raise Wrong(f"step 0 gives a rate of 0 ({[round(float(g), 3) for g in got]}): the warm-up is lr · (step + 1) "
                    "/ warmup, so that the first step already learns and step warmup − 1 reaches the peak")
    raise Wrong(f"warm-up rates {[round(float(g), 3) for g in got]}, expected {expected}: "
                "lr · (step + 1) / warmup while step < warmup")


def check_cosine_known_answers():
    """Warm-up 10, 110 steps, peak 3e-4: the rate at the peak, a quarter, half, three quarters and the end."""
    lr = 3e-4
    # p = (s − 10) / 100: s = 10, 35, 60, 85, 110 -> p = 0, ¼, ½, ¾, 1; cos πp = 1, √2/2, 0, −√2/2, −1
    half = math.sqrt(2) / 2
    expected = {10: 1.0, 35: 0.1 + 0.45 * (1 + half), 60: 0.55, 85: 0.1 + 0.45 * (1 - half), 110: 0.1}
    got = {s: stages.cosine_lr(s, 110, 10, lr) for s in expected}
    if close(got[110], 0.0):
        raise Wrong("the rate at the last step is 0: the schedule decays to 10% of the peak, "
                    "lr · (0.1 + 0.9 · ½ (1 + cos π p)), not to zero")
    if not close(got[10], lr):
        raise Wrong(f"at step 10, the first after a 10-step warm-up, the rate is {got[10]}, expected the peak {lr}: "
                    "the cosine's progress starts at the end of the warm-up, p = (step − warmup) / (max_steps − warmup)")
    for s, fraction in expected.items():
        if not close(got[s], lr * fraction):
            raise Wrong(f"at step {s} the rate is {got[s]}, expected {lr * fraction:.6g} = {fraction:.5f} · lr "
                        f"(p = {(s - 10) / 100}): lr · (0.1 + 0.9 · ½ (1 + cos(π p)))")


def check_stays_at_the_floor_past_max_steps():
    """Steps past max_steps (resumed or longer runs) keep the 10% floor instead of rising again."""
    got = [stages.cosine_lr(s, 100, 10, 1.0) for s in (100, 150, 190, 500)]
    if all(close(g, 0.0) for g in got):
        raise Wrong(f"rates at steps 100, 150, 190, 500 of a 100-step schedule: {got}, expected 0.1 each: the floor "
                    "is 10% of the peak, not zero")
    if not all(close(g, 0.1) for g in got):
        raise Wrong(f"rates at steps 100, 150, 190, 500 of a 100-step schedule: {got}, expected 0.1 each: past "
                    "max_steps the progress is clamped, min(1, p), or the cosine climbs back to the peak")


def check_no_warmup():
    """warmup = 0: no division by zero, step 0 is the peak, and a one-step schedule is valid."""
    got = stages.cosine_lr(0, 50, 0, 2.0)
    if not close(got, 2.0):
        raise Wrong(f"with warmup = 0 step 0 should have the peak rate 2.0, got {got}")
    single = stages.cosine_lr(0, 0, 0, 2.0)
    if not close(single, 2.0):
        raise Wrong(f"cosine_lr(0, max_steps=0, warmup=0, lr=2.0) gives {single}, expected 2.0: divide by "
                    "max(1, max_steps − warmup), so a schedule with no steps after warm-up does not divide by zero")
