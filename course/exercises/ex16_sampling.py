"""Exercise 16 (§3, generation): drawing the next tokens, with temperature, top-k and top-p.

At each pattern step the LM (after guidance) gives logits l (B, K, card) for every codebook, and one
token per (b, k) is drawn from

    p = softmax(l / T)                          temperature T: T < 1 sharpens, T > 1 flattens

restricted to a set of likely tokens and renormalized over it (the paper samples with top-k, k = 250):

    top-k:  the k tokens of largest logit (top_k ≤ 0 or ≥ card: no restriction);
    top-p:  the nucleus, the smallest set of most likely tokens whose probability reaches p: a token is
            kept when the mass of the tokens more likely than it is at most p (used when top_p > 0,
            instead of top-k).

Write `sample_next_tokens` in musicgen.py: logits (B, K, card) -> tokens (B, K) int64. With
use_sampling=False, or temperature ≤ 0, it is greedy (the argmax). Random draws come from `generator`
(a torch.Generator, or None for torch's global one), so that a seeded generator reproduces the music.
"""
import math

import torch

import musicgen
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=16, title="Sampling: temperature, top-k, top-p", section="§3",
    blanks=[("musicgen.py", "sample_next_tokens")],
    hints=["Greedy first: if not use_sampling or temperature <= 0, return logits.argmax(dim=-1). Otherwise "
           "divide the logits (as float) by the temperature.",
           "Top-k: the k-th largest logit per (b, k), e.g. logits.topk(top_k, dim=-1).values[..., -1:]; set "
           "every logit below it to -inf, then softmax.",
           "Top-p: sort the probabilities in descending order; a token is outside the nucleus when the mass "
           "*before* it, cumsum − its own probability, exceeds p. Zero those, scatter back to the original order.",
           "Draw with torch.multinomial(probs.reshape(-1, card), 1, generator=generator) (it renormalizes), "
           "or invert the cumulative sum with one torch.rand(..., generator=generator) per (b, k)."],
)


def hand_logits(*rows):
    """Logits (1, K, card) whose softmax is the given probability rows (log p; p = 0 becomes -inf)."""
    return torch.tensor(rows, dtype=torch.float64).log().float()[None]


def draw(logits, n, seed=0, **options):
    """n draws of each codebook's token from `logits` (1, K, card) as n batch rows: frequencies (K, card)."""
    _, K, card = logits.shape
    tokens = musicgen.sample_next_tokens(logits.expand(n, K, card).contiguous(),
                                         generator=torch.Generator().manual_seed(seed), **options)
    if not isinstance(tokens, torch.Tensor) or tokens.shape != (n, K):
        raise Wrong(f"logits (B, K, card) = {(n, K, card)} should give tokens (B, K) = {(n, K)}, got "
                    f"{getattr(tokens, 'shape', type(tokens))}")
    if tokens.dtype != torch.long:
        raise Wrong(f"tokens must be int64 (they index the embeddings and the codebooks), got {tokens.dtype}")
    if tokens.min() < 0 or tokens.max() >= card:
        raise Wrong(f"tokens must be in 0 .. card - 1 = {card - 1}, got values from {int(tokens.min())} to "
                    f"{int(tokens.max())}")
    return torch.stack([torch.bincount(tokens[:, k], minlength=card).double() / n for k in range(K)])


def compare(frequencies, expected, n, what):
    """Observed frequencies against probabilities: exact zeros where p = 0, 5 binomial σ elsewhere."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    for k in range(expected.shape[0]):
        for token, (f, p) in enumerate(zip(frequencies[k].tolist(), expected[k].tolist())):
            tolerance = 5 * math.sqrt(p * (1 - p) / n)
            if (p == 0 and f > 0) or abs(f - p) > tolerance:
                raise Wrong(f"{what}: codebook {k}, token {token} was drawn {f:.3f} of {n} times, expected {p:.3f}"
                            + (f" ± {tolerance:.3f}" if p else " (never)"))


def check_greedy_is_argmax():
    """use_sampling=False, or temperature 0, returns the argmax (B, K) as int64."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 10, generator=generator)
    expected = logits.argmax(-1)   # the definition of greedy decoding (random logits: no ties)
    for options in (dict(use_sampling=False), dict(use_sampling=True, temperature=0.0)):
        got = musicgen.sample_next_tokens(logits, **options)
        if not isinstance(got, torch.Tensor) or got.shape != (3, 4):
            raise Wrong(f"logits (B, K, card) = (3, 4, 10) should give tokens (B, K) = (3, 4), got "
                        f"{getattr(got, 'shape', type(got))} with {options}")
        if got.dtype != torch.long:
            raise Wrong(f"tokens must be int64, got {got.dtype} with {options}")
        if not torch.equal(got, expected):
            raise Wrong(f"with {options} decoding is greedy: the argmax over the last axis (card), once per (b, k)")


def check_plain_sampling_matches_softmax():
    """T = 1, no top-k / top-p: 20 000 draws per codebook follow softmax(l)."""
    probs = [[0.5, 0.25, 0.15, 0.1], [0.1, 0.2, 0.3, 0.4]]
    n = 20000
    compare(draw(hand_logits(*probs), n, top_k=0, top_p=0.0), probs, n, "plain sampling (T = 1, no top-k, top-p)")


def check_top_k():
    """top_k = 3: never a token outside each codebook's 3 largest, which follow their renormalized softmax."""
    probs = [[0.05, 0.3, 0.02, 0.25, 0.2, 0.08, 0.06, 0.04],
             [0.2, 0.02, 0.05, 0.08, 0.06, 0.04, 0.25, 0.3]]   # top 3: tokens 1, 3, 4 | 7, 6, 0
    n = 20000
    frequencies = draw(hand_logits(*probs), n, top_k=3, top_p=0.0)
    for k, row in enumerate(probs):
        top = sorted(range(8), key=lambda t: -row[t])[:3]
        outside = [t for t in range(8) if t not in top and frequencies[k, t] > 0]
        if outside:
            raise Wrong(f"top_k = 3, codebook {k}: token {outside[0]} (p = {row[outside[0]]}) is outside the top 3 "
                        f"{sorted(top)} but was drawn: keep exactly the k largest logits (off by one?)")
        missing = [t for t in top if frequencies[k, t] == 0]
        if missing:
            raise Wrong(f"top_k = 3, codebook {k}: token {missing[0]}, one of the 3 largest, was never drawn: keep "
                        "the k largest, the k-th included (off by one?)")
    expected = [[p / sum(sorted(row)[-3:]) if p in sorted(row)[-3:] else 0.0 for p in row] for row in probs]
    compare(frequencies, expected, n, "top_k = 3 (the 3 largest, renormalized)")


def check_top_p():
    """top_p = 0.7 keeps p = 0.5 and 0.3 (0.5 alone does not reach 0.7); top_p = 0.9 also keeps 0.15."""
    probs = [[0.15, 0.5, 0.05, 0.3], [0.3, 0.05, 0.15, 0.5]]
    n = 20000
    for top_p, nucleus in ((0.7, (0.5, 0.3)), (0.9, (0.5, 0.3, 0.15))):
        frequencies = draw(hand_logits(*probs), n, top_k=0, top_p=top_p)
        for k, row in enumerate(probs):
            for token, p in enumerate(row):
                if p in nucleus and frequencies[k, token] == 0:
                    raise Wrong(f"top_p = {top_p}: the token of probability {p} was never drawn, but the nucleus is "
                                f"{list(nucleus)}: a token is kept while the mass of the tokens before it is at most "
                                "p; does your cut count the token's own mass too?")
                if p not in nucleus and frequencies[k, token] > 0:
                    raise Wrong(f"top_p = {top_p}: the token of probability {p} was drawn, but the nucleus is only "
                                f"{list(nucleus)}: drop a token once the mass before it exceeds p")
        expected = [[p / sum(nucleus) if p in nucleus else 0.0 for p in row] for row in probs]
        compare(frequencies, expected, n, f"top_p = {top_p} (the nucleus, renormalized)")


def check_temperature():
    """T = 0.5 squares the probabilities (sharper), T = 2 takes their square root (flatter), T = 0.05 ≈ argmax."""
    probs = [[0.5, 0.3, 0.2]]
    n = 20000
    for temperature in (0.5, 2.0):
        powered = [p ** (1 / temperature) for p in probs[0]]   # softmax(log p / T) ∝ p^(1/T)
        expected = [[p / sum(powered) for p in powered]]
        frequencies = draw(hand_logits(*probs), n, top_k=0, top_p=0.0, temperature=temperature)
        if temperature < 1 and frequencies[0, 0] < 0.5:
            raise Wrong(f"T = {temperature} should sharpen (the most likely token drawn more than its p = 0.5), "
                        f"but it was drawn {float(frequencies[0, 0]):.3f} of the time: the temperature divides the "
                        "logits, l / T; it does not multiply them")
        compare(frequencies, expected, n, f"temperature {temperature} (softmax(l / T))")
    cold = draw(hand_logits(*probs), 2000, top_k=0, top_p=0.0, temperature=0.05)
    if cold[0, 0] < 0.99:
        raise Wrong(f"at T = 0.05 the most likely token should be drawn almost always, got {float(cold[0, 0]):.3f}: "
                    "divide the logits by T before the softmax")


def check_seeded_generator():
    """The same seed gives the same tokens whatever torch's global random state; another seed, others."""
    logits = torch.zeros(64, 4, 32)   # uniform: every draw is up to the generator
    torch.manual_seed(1)
    first = musicgen.sample_next_tokens(logits, top_k=0, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    again = musicgen.sample_next_tokens(logits, top_k=0, generator=torch.Generator().manual_seed(7))
    other = musicgen.sample_next_tokens(logits, top_k=0, generator=torch.Generator().manual_seed(8))
    if not torch.equal(first, again):
        raise Wrong("two runs with generators seeded alike gave different tokens: draw the random numbers from "
                    "`generator` (torch.rand(..., generator=generator) or torch.multinomial(..., generator=generator)), "
                    "not from torch's global generator")
    if torch.equal(first, other):
        raise Wrong("generators seeded 7 and 8 gave the same 256 tokens from uniform logits: is anything random drawn?")
