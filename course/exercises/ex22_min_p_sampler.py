"""Project 22 (§3, generation): a min-p sampler.

Top-k keeps a fixed number of tokens and top-p a fixed mass, whatever the shape of the distribution.
Min-p sampling (Nguyen et al., 2024, "Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM
Outputs") keeps a threshold relative to the most likely token instead:

    p = softmax(l / T),     keep = { i : p_i ≥ min_p · max_j p_j },     draw from p restricted to keep, renormalized.

A confident step (one token near 1) keeps almost nothing else; an uncertain one keeps many tokens. The
temperature comes first: it changes p, hence which tokens pass the threshold. min_p = 1 keeps only the
most likely token (greedy); min_p = 0 keeps every token (plain sampling from softmax(l / T)).

`python -m course start 22` creates course/projects/min_p_sampler.py with the function to write:
`sample_min_p(logits, min_p=0.1, temperature=1.0, generator=None)`, logits (B, K, card) -> tokens (B, K)
int64, one draw per (b, k) from `generator` (a torch.Generator, or None for torch's global one). The checks
grade properties of the draws, not a particular way of drawing. (To try it in generation, call it where
musicgen.generate_codes calls sample_next_tokens.)
"""
import math

import torch

from course.grading import Exercise, Wrong, load_project

TEMPLATE = '''"""Project 22: min-p sampling (Nguyen et al., 2024), a sampler for MusicGen's decoding (musicgen.py).

Keep the tokens whose probability is at least min_p times the most likely token's, renormalize over
them, and draw one token per (b, k):

    p = softmax(logits / temperature),   keep = p >= min_p * max(p),   draw from p * keep / sum(p * keep).

Graded by `python -m course check 22`.
"""
import torch


def sample_min_p(logits, min_p=0.1, temperature=1.0, generator=None):
    """Min-p sampling: logits (B, K, card) -> tokens (B, K) int64.

    Args:
        logits: (B, K, card), one distribution per batch row b and codebook k.
        min_p: in [0, 1]; a token is kept when its probability is at least min_p times the largest
            probability of its (b, k). 1 keeps only the most likely token, 0 keeps every token.
        temperature: > 0; the logits are divided by it *before* the probabilities are compared.
        generator: torch.Generator for every random draw (None: torch's global one); the same seed must
            give the same tokens.
    """
    raise NotImplementedError("project 22: write sample_min_p in course/projects/min_p_sampler.py")
'''

EXERCISE = Exercise(
    number=22, title="A min-p sampler", section="§3",
    project="course/projects/min_p_sampler.py", template=TEMPLATE, blanks=[],
    hints=["probs = torch.softmax(logits.float() / temperature, dim=-1), then the largest per (b, k): "
           "probs.amax(dim=-1, keepdim=True), (B, K, 1), broadcasts against probs.",
           "Zero the probabilities below min_p * largest (>=, so that min_p = 1 keeps the largest itself), "
           "then draw: torch.multinomial(probs.reshape(-1, card), 1, generator=generator) renormalizes for "
           "you; reshape back to (B, K).",
           "Threshold after the temperature: at T = 2 the probabilities are flatter, so more tokens pass."],
)


def sampler():
    return load_project(EXERCISE).sample_min_p


def hand_logits(*rows):
    """Logits (1, K, card) whose softmax is the given probability rows."""
    return torch.tensor(rows, dtype=torch.float64).log().float()[None]


def draw(logits, n, seed=0, **options):
    """n draws of each codebook's token from `logits` (1, K, card) as n batch rows: frequencies (K, card)."""
    _, K, card = logits.shape
    tokens = sampler()(logits.expand(n, K, card).contiguous(), generator=torch.Generator().manual_seed(seed),
                       **options)
    if not isinstance(tokens, torch.Tensor) or tokens.shape != (n, K):
        raise Wrong(f"logits (B, K, card) = {(n, K, card)} should give tokens (B, K) = {(n, K)}, got "
                    f"{getattr(tokens, 'shape', type(tokens))}")
    if tokens.min() < 0 or tokens.max() >= card:
        raise Wrong(f"tokens must be in 0 .. card - 1 = {card - 1}, got {int(tokens.min())} .. {int(tokens.max())}")
    return torch.stack([torch.bincount(tokens[:, k].long(), minlength=card).double() / n for k in range(K)])


def compare(frequencies, expected, n, what):
    """Observed frequencies against probabilities: exact zeros where p = 0, 5 binomial σ elsewhere."""
    for k, row in enumerate(expected):
        for token, p in enumerate(row):
            f = float(frequencies[k, token])
            tolerance = 5 * math.sqrt(p * (1 - p) / n)
            if (p == 0 and f > 0) or abs(f - p) > tolerance:
                raise Wrong(f"{what}: codebook {k}, token {token} was drawn {f:.3f} of {n} times, expected {p:.3f}"
                            + (f" ± {tolerance:.3f}" if p else " (never)"))


def check_shape_and_dtype():
    """Logits (B, K, card) give tokens (B, K), int64, each in 0 .. card - 1."""
    logits = torch.randn(3, 4, 16, generator=torch.Generator().manual_seed(0))
    tokens = sampler()(logits, min_p=0.1, generator=torch.Generator().manual_seed(1))
    if not isinstance(tokens, torch.Tensor) or tokens.shape != (3, 4):
        raise Wrong(f"logits (B, K, card) = (3, 4, 16) should give tokens (B, K) = (3, 4), got "
                    f"{getattr(tokens, 'shape', type(tokens))}: one token per batch row and codebook")
    if tokens.dtype != torch.long:
        raise Wrong(f"tokens must be int64 (they index the codebooks), got {tokens.dtype}")
    if tokens.min() < 0 or tokens.max() >= 16:
        raise Wrong(f"tokens must be in 0 .. 15, got {tokens.min()} .. {tokens.max()}")


def check_threshold_relative_to_the_top():
    """min_p = 0.3 of p_max = 0.4 is 0.12: tokens of p 0.4, 0.3, 0.15 only, in ratio 0.4 : 0.3 : 0.15."""
    probs = [[0.4, 0.3, 0.15, 0.1, 0.05], [0.05, 0.1, 0.15, 0.3, 0.4]]
    n = 20000
    frequencies = draw(hand_logits(*probs), n, min_p=0.3)
    for k, row in enumerate(probs):
        for token, p in enumerate(row):
            if p < 0.12 and frequencies[k, token] > 0:
                raise Wrong(f"min_p = 0.3, codebook {k}: token {token} (p = {p} < 0.3 × 0.4 = 0.12) was drawn: keep "
                            "only tokens with p ≥ min_p · p_max")
            if p >= 0.12 and frequencies[k, token] == 0:
                raise Wrong(f"min_p = 0.3, codebook {k}: token {token} (p = {p} ≥ 0.3 × 0.4 = 0.12) was never drawn: "
                            "the threshold is relative to the most likely token's probability, min_p · p_max, "
                            "not min_p itself")
    expected = [[p / 0.85 if p >= 0.12 else 0.0 for p in row] for row in probs]
    compare(frequencies, expected, n, "min_p = 0.3 (the kept tokens, renormalized)")


def check_min_p_one_is_greedy():
    """min_p = 1 keeps only the most likely token: the argmax, for random logits."""
    logits = torch.randn(50, 4, 16, generator=torch.Generator().manual_seed(2))
    tokens = sampler()(logits, min_p=1.0, generator=torch.Generator().manual_seed(3))
    if not torch.equal(tokens.long(), logits.argmax(-1)):
        raise Wrong("min_p = 1 should keep only the most likely token (p ≥ 1 · p_max), i.e. give the argmax; "
                    "is the comparison ≥ (not >), and against the largest probability of each (b, k)?")


def check_min_p_zero_is_plain_sampling():
    """min_p = 0 keeps every token: 20 000 draws follow softmax(l)."""
    probs = [[0.5, 0.25, 0.15, 0.1], [0.1, 0.2, 0.3, 0.4]]
    n = 20000
    compare(draw(hand_logits(*probs), n, min_p=0.0), probs, n, "min_p = 0 (every token, softmax)")


def check_seeded_generator():
    """The same seed gives the same tokens whatever torch's global random state; another seed, others."""
    logits = torch.zeros(64, 4, 32)   # uniform: every draw is up to the generator
    sample = sampler()
    torch.manual_seed(1)
    first = sample(logits, min_p=0.0, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    again = sample(logits, min_p=0.0, generator=torch.Generator().manual_seed(7))
    other = sample(logits, min_p=0.0, generator=torch.Generator().manual_seed(8))
    if not torch.equal(first, again):
        raise Wrong("two runs with generators seeded alike gave different tokens: pass `generator` to every random "
                    "draw (torch.multinomial(..., generator=generator)), not torch's global generator")
    if torch.equal(first, other):
        raise Wrong("generators seeded 7 and 8 gave the same 256 tokens from uniform logits: is anything random drawn?")


def check_temperature_before_the_threshold():
    """p = [0.5, 0.3, 0.2], min_p = 0.5: T = 1 keeps 2 tokens, T = 2 (flatter) all 3, T = 0.5 only the first."""
    probs = [[0.5, 0.3, 0.2]]
    n = 20000
    for temperature, kept in ((2.0, 3), (0.5, 1), (1.0, 2)):
        powered = [p ** (1 / temperature) for p in probs[0]]   # softmax(log p / T) ∝ p^(1/T)
        scaled = [p / sum(powered) for p in powered]           # T = 2: [.415, .322, .263]; T = 0.5: [.658, .237, .105]
        expected = [[p if i < kept else 0.0 for i, p in enumerate(scaled)]]
        expected = [[p / sum(expected[0]) for p in expected[0]]]
        frequencies = draw(hand_logits(*probs), n, min_p=0.5, temperature=temperature)
        drawn = int((frequencies[0] > 0).sum())
        if drawn != kept:
            raise Wrong(f"min_p = 0.5 at temperature {temperature}: {drawn} different tokens were drawn, expected "
                        f"{kept}: the threshold compares the probabilities after the temperature, "
                        "softmax(l / T), so a flatter (T > 1) distribution keeps more tokens")
        compare(frequencies, expected, n, f"min_p = 0.5 at temperature {temperature}")
