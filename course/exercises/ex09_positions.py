"""Exercise 9 (§2.3, the transformer): sinusoidal position embeddings.

The decoder sees a sum of codebook embeddings per step and would not know where in the sequence a step
is; MusicGen adds a sinusoidal embedding of the step's absolute position p (Vaswani et al., 2017, §3.5),
in the layout the published weights were trained with (audiocraft, HF transformers):

    PE(p)[i]         = cos(p · ω_i)      ω_i = max_period^(-i / (D/2 - 1)),   i = 0 .. D/2 - 1
    PE(p)[D/2 + i]   = sin(p · ω_i)

that is, the cos half then the sin half (not interleaved), and an exponent divided by D/2 - 1, so the
fastest frequency is ω_0 = 1 and the slowest exactly 1 / max_period. Write `sinusoidal_positions` in
transformer.py: positions (S,) or (B, S), integers or floats, -> (S, D) or (B, S, D) float32.
"""
import math
from pathlib import Path

import torch

import transformer
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=9, title="Sinusoidal positions", section="§2.3",
    blanks=[("transformer.py", "sinusoidal_positions")],
    hints=["First the D/2 frequencies: ω_i = max_period^(-i / (D/2 - 1)) for i = 0 .. D/2 - 1, e.g. "
           "torch.exp(torch.arange(half) * -(math.log(max_period) / (half - 1))).",
           "The phases are an outer product: positions.float()[..., None] * frequencies has shape "
           "(..., S, D/2), for (S,) and (B, S) positions alike.",
           "torch.cat([cos(phase), sin(phase)], dim=-1): the cos half first, then the sin half."],
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "positions.pt"


def check_position_zero():
    """Position 0 is cos(0) = 1 in the first half and sin(0) = 0 in the second: [1, 1, 1, 0, 0, 0]."""
    got = transformer.sinusoidal_positions(torch.tensor([0]), 6)
    if not isinstance(got, torch.Tensor) or got.shape != (1, 6):
        raise Wrong(f"positions (S,) = (1,) with D = 6 should give (S, D) = (1, 6), got {getattr(got, 'shape', type(got))}")
    if got.dtype != torch.float32:
        raise Wrong(f"the embedding must be float32 (it is added to the float32 embeddings), got {got.dtype}")
    row = [round(value, 4) for value in got[0].tolist()]
    if row == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]:
        return
    if row == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]:
        raise Wrong(f"position 0 gives {row}: the sin half comes first; the reference puts the cos half first, "
                    "then the sin half (torch.cat([cos, sin], dim=-1))")
    if row == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]:
        raise Wrong(f"position 0 gives {row}: cos and sin are interleaved (Vaswani's layout); the reference puts "
                    "the cos half first, then the sin half (torch.cat([cos, sin], dim=-1))")
    raise Wrong(f"position 0 gives {row}, expected [1, 1, 1, 0, 0, 0] (the cos half, then the sin half)")


def check_hand_computed_frequencies():
    """D = 6, max_period 100: ω = 1, 0.1, 0.01, and position 2 is cos/sin of 2, 0.2, 0.02."""
    # ω_i = 100^(-i / (3 - 1)) = 100^(-i/2): 1, 1/10, 1/100.
    got = transformer.sinusoidal_positions(torch.tensor([2]), 6, max_period=100.0)[0]
    expected = torch.tensor([math.cos(2.0), math.cos(0.2), math.cos(0.02), math.sin(2.0), math.sin(0.2), math.sin(0.02)])
    if torch.allclose(got, expected, atol=1e-5):
        return
    vaswani = [1.0, 100 ** (-1 / 3), 100 ** (-2 / 3)]  # ω_i = max_period^(-i / (D/2))
    if torch.allclose(got, torch.tensor([math.cos(2 * w) for w in vaswani] + [math.sin(2 * w) for w in vaswani]), atol=1e-5):
        raise Wrong("the frequencies are max_period^(-i / (D/2)) (Vaswani's formula); the reference divides the "
                    "exponent by D/2 - 1, so that the slowest frequency is exactly 1 / max_period")
    raise Wrong(f"position 2 with D = 6, max_period 100 gives {[round(v, 5) for v in got.tolist()]}, expected "
                f"{[round(v, 5) for v in expected.tolist()]} (ω = 1, 0.1, 0.01: is the exponent -i / (D/2 - 1), "
                "and is max_period used rather than 10000?)")


def check_against_the_stored_table():
    """Positions 0..7 with D = 8 equal the reference's table stored in course/fixtures/positions.pt."""
    stored = torch.load(FIXTURE, weights_only=True)
    got = transformer.sinusoidal_positions(stored["positions"], stored["table"].shape[1])
    if got.shape != stored["table"].shape:
        raise Wrong(f"positions (8,) with D = 8 should give (8, 8), got {tuple(got.shape)}")
    error = (got - stored["table"]).abs()
    if float(error.max()) > 1e-5:
        p, i = divmod(int(error.argmax()), got.shape[1])
        raise Wrong(f"position {p}, feature {i}: got {float(got[p, i]):.6f}, the reference has "
                    f"{float(stored['table'][p, i]):.6f} (features 0-3 are cos(p ω_i), 4-7 sin(p ω_i), "
                    "ω_i = 10000^(-i / 3))")


def check_batched_and_float_positions():
    """(B, S) positions give (B, S, D), row by row the same as (S,); float positions are accepted."""
    positions = torch.tensor([[0, 1, 2, 3], [10, 11, 12, 13]])
    got = transformer.sinusoidal_positions(positions, 8)
    if got.shape != (2, 4, 8):
        raise Wrong(f"positions (B, S) = (2, 4) with D = 8 should give (B, S, D) = (2, 4, 8), got {tuple(got.shape)}")
    for b in range(2):
        if not torch.allclose(got[b], transformer.sinusoidal_positions(positions[b], 8), atol=1e-6):
            raise Wrong(f"row {b} of a (B, S) batch differs from the same positions given as (S,): the phase "
                        "should be positions[..., None] * frequencies, whatever the leading dimensions")
    halves = got[..., :4] ** 2 + got[..., 4:] ** 2  # cos²(pω_i) + sin²(pω_i) = 1 for each pair (i, D/2 + i)
    if not torch.allclose(halves, torch.ones_like(halves), atol=1e-5):
        raise Wrong("features i and D/2 + i should be the cos and the sin of the same phase p·ω_i "
                    "(their squares sum to 1); are the halves built from the same phases?")
    floats = transformer.sinusoidal_positions(torch.tensor([0.5]), 4)
    expected = torch.tensor([math.cos(0.5), math.cos(0.5e-4), math.sin(0.5), math.sin(0.5e-4)])
    if floats.dtype != torch.float32 or not torch.allclose(floats[0], expected, atol=1e-6):
        raise Wrong(f"float position 0.5 with D = 4 gives {floats[0].tolist()} ({floats.dtype}), expected "
                    f"{expected.tolist()} in float32: are the positions rounded, or not cast to float32?")
