"""Exercise 15 (§3, generation): classifier-free guidance.

At each decoding step the LM runs twice, with the condition (text, melody) and with the null condition,
and MusicGen samples from a mix of the two sets of logits (Ho & Salimans, 2022):

    l = l_null + γ · (l_cond − l_null)          γ = cfg_coef (paper: 3)

γ = 1 is the conditional model alone, γ = 0 the unconditional one, and γ > 1 pushes further from the
unconditional logits, in the direction the condition adds. Write `guidance` in musicgen.py: cond and
null, logits (B, K, card), and cfg_coef γ -> the guided logits (B, K, card).
"""
import torch

import musicgen
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=15, title="Classifier-free guidance", section="§3",
    blanks=[("musicgen.py", "guidance")],
    hints=["One line of tensor arithmetic: start from the unconditional logits and move γ times the "
           "difference the condition makes.",
           "null + cfg_coef * (cond - null). Check it: γ = 1 gives cond, γ = 0 gives null."],
)


def logits(generator, B=2, K=4, card=16):
    return torch.randn(B, K, card, generator=generator)


def check_hand_numbers():
    """cond [2, 0, -1], null [1, 1, 1], γ = 3: l = 1 + 3·(cond − null) = [4, -2, -5]."""
    cond = torch.tensor([2.0, 0.0, -1.0]).reshape(1, 1, 3)
    null = torch.tensor([1.0, 1.0, 1.0]).reshape(1, 1, 3)
    got = musicgen.guidance(cond, null, 3.0)
    if not isinstance(got, torch.Tensor) or got.shape != (1, 1, 3):
        raise Wrong(f"guidance of (B, K, card) = (1, 1, 3) logits should be (1, 1, 3), got "
                    f"{getattr(got, 'shape', type(got))}")
    if not torch.allclose(got.flatten(), torch.tensor([4.0, -2.0, -5.0])):
        raise Wrong(f"got {got.flatten().tolist()} for cond [2, 0, -1], null [1, 1, 1], γ = 3, expected [4, -2, -5] "
                    "= l_null + γ·(l_cond − l_null)")


def check_gamma_one_is_the_conditional_model():
    """γ = 1 gives exactly the conditional logits."""
    generator = torch.Generator().manual_seed(0)
    cond, null = logits(generator), logits(generator)
    got = musicgen.guidance(cond, null, 1.0)
    if torch.allclose(got, null, atol=1e-6):
        raise Wrong("γ = 1 gave the unconditional logits; γ = 1 must give the conditional logits: the roles of "
                    "cond and null are swapped (l = l_null + γ·(l_cond − l_null))")
    if not torch.allclose(got, cond, atol=1e-6):
        raise Wrong("γ = 1 must give the conditional logits (l_null + 1·(l_cond − l_null) = l_cond); it does not")


def check_gamma_zero_is_the_unconditional_model():
    """γ = 0 gives exactly the unconditional (null) logits."""
    generator = torch.Generator().manual_seed(1)
    cond, null = logits(generator), logits(generator)
    got = musicgen.guidance(cond, null, 0.0)
    if not torch.allclose(got, null, atol=1e-6):
        raise Wrong("γ = 0 must give the unconditional (null) logits; it does not: does the formula start from "
                    "l_null (l = l_null + γ·(l_cond − l_null)), not from l_cond?")


def check_linear_in_gamma():
    """For γ = 0 .. 5 the guided logits move along a line, by γ × (cond − null)."""
    generator = torch.Generator().manual_seed(2)
    cond, null = logits(generator), logits(generator)
    base = musicgen.guidance(cond, null, 0.0)
    for gamma in (0.5, 2.0, 3.0, 5.0):
        step = musicgen.guidance(cond, null, gamma) - base
        if not torch.allclose(step, gamma * (cond - null), atol=1e-5):
            raise Wrong(f"between γ = 0 and γ = {gamma} the logits moved by something other than γ·(l_cond − l_null): "
                        "guidance must be linear in γ with slope l_cond − l_null")
