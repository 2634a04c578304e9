from course.grading import Mistake

PROJECT = "course/projects/min_p_sampler.py"

SOLUTION = '''"""Project 22: min-p sampling (Nguyen et al., 2024), a sampler for MusicGen's decoding (musicgen.py).

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
    B, K, card = logits.shape
    probs = torch.softmax(logits.float() / temperature, dim=-1)          # (B, K, card)
    keep = probs >= min_p * probs.amax(dim=-1, keepdim=True)            # the largest always passes
    probs = probs * keep
    probs = probs / probs.sum(dim=-1, keepdim=True)                     # renormalized over the kept tokens
    tokens = torch.multinomial(probs.reshape(B * K, card), 1, generator=generator)  # (B K, 1)
    return tokens.reshape(B, K)
'''

MISTAKES = [
    Mistake("an absolute threshold", PROJECT, "keep = probs >= min_p * probs.amax(dim=-1, keepdim=True)",
            "keep = probs >= min_p", says="not min_p itself"),
    Mistake("the threshold before the temperature", PROJECT,
            "    keep = probs >= min_p * probs.amax(dim=-1, keepdim=True)",
            "    plain = torch.softmax(logits.float(), dim=-1)\n"
            "    keep = plain >= min_p * plain.amax(dim=-1, keepdim=True)", says="after the temperature"),
    Mistake("the global generator", PROJECT,
            "tokens = torch.multinomial(probs.reshape(B * K, card), 1, generator=generator)",
            "tokens = torch.multinomial(probs.reshape(B * K, card), 1)", says="not torch's global generator"),
]
