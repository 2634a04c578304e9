"""Sampling from the LM (paper §3): top-k / top-p / temperature, classifier-free guidance, KV cache.

Generation runs the LM of lm.py one pattern step at a time. At step s it has the logits of
every codebook for step s+1, mixes the conditional and the null-condition logits (classifier-free
guidance, Ho & Salimans 2022),

    l = l_null + γ · (l_cond − l_null)          γ = cfg_coef (paper: 3; γ = 1 is no guidance)

and draws one token per codebook from softmax(l / temperature), restricted to the top-k tokens
(paper: k = 250) or to the top-p nucleus. The conditional and null branches run as one batch of 2B.
A KV cache (transformer.KVCache) keeps every layer's keys and values, so each step feeds only the
new tokens.

Shape letters: B batch, K codebooks, T frames, S pattern steps, L text tokens, D model width,
F chroma frames, card = codebook_size.
Data flow: musicgen.MusicGen._generate → generate_codes (per window) → codes (B, K, T) → codec.decode.
"""
import torch

from transformer import KVCache


def sample_next_tokens(logits, use_sampling=True, temperature=1.0, top_k=250, top_p=0.0, generator=None):
    """Pick one token per codebook from logits (B, K, card) → (B, K).

    The random draw has the same shape at every step whatever the logits are, so a seeded generator
    gives identical codes for any duration and with or without the KV cache.
    """
    B, K, card = logits.shape
    if not use_sampling or temperature <= 0:
        return logits.argmax(dim=-1)  # greedy decoding
    # Temperature: divide the logits, flattening (T > 1) or sharpening (T < 1) the distribution.
    logits = logits.float() / temperature
    if top_p > 0:
        # Top-p (nucleus): keep the smallest set of tokens whose probability sums to p.
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # mass *before* a token already exceeds p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    else:
        if 0 < top_k < card:
            # Top-k: keep the k largest logits. The k-th largest is the (card - k + 1)-th smallest;
            # kthvalue finds it faster than topk(k) (NOTES.md, "Decoding at the real size"). The others
            # get probability exp(-inf) = 0.
            kth = logits.kthvalue(card - top_k + 1, dim=-1, keepdim=True).values  # (B, K, 1)
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)  # (B, K, card)
    # Sample by inverting the cumulative distribution with one uniform number per (b, k), scaled to the
    # kept mass (so top-p needs no renormalisation and rounding can never run past the last token);
    # `right=True` skips the zero-probability tokens a draw of exactly 0 would otherwise land on.
    cdf = probs.cumsum(-1)                                                        # (B, K, card)
    uniform = torch.rand(B, K, 1, generator=generator, device=logits.device)
    return torch.searchsorted(cdf, uniform * cdf[..., -1:], right=True).squeeze(-1)  # (B, K, 1) -> (B, K)


@torch.inference_mode()  # like no_grad, minus autograd's version bookkeeping (a cost on every small op)
def generate_codes(lm, text, text_mask, chroma, n_frames, prompt=None, cfg_coef=3.0,
                   use_sampling=True, temperature=1.0, top_k=250, top_p=0.0, generator=None, use_cache=True):
    """Autoregressive decoding over the pattern's steps, within one window (§3).

    Args:
        lm: lm.LMModel.
        text (B, L, D), text_mask (B, L): encoded descriptions; chroma (B, F, 12) or None (no melody).
        n_frames: T, frames to return (prompt included), at most the training window.
        prompt: (B, K, Tp) codes kept verbatim at the start, or None.
        cfg_coef: classifier-free guidance γ (paper: 3); None runs the conditional model alone.
    Returns:
        codes (B, K, T).
    """
    B = text.shape[0]
    K, unknown = lm.cfg.n_q, -1
    codes = torch.full((B, K, n_frames), unknown, dtype=torch.long, device=text.device)
    if prompt is not None:
        assert prompt.shape[:2] == (B, K) and prompt.shape[2] <= n_frames, f"bad prompt shape {tuple(prompt.shape)}"
        codes[..., :prompt.shape[2]] = prompt
    # The pattern places every (k, t) at its step; still-unknown tokens are -1, special ones stay special.
    sequence, _ = lm.pattern.build(codes, lm.special)  # (B, K, T) -> (B, K, S)
    S = sequence.shape[-1]
    if cfg_coef is not None:
        # CFG as one batch of 2B: first half conditional, second half the null condition
        # (no text: all-zero states, all masked; the null melody: the chroma of silence).
        text = torch.cat([text, torch.zeros_like(text)])
        text_mask = torch.cat([text_mask, torch.zeros_like(text_mask)])
        if chroma is not None:
            chroma = torch.cat([lm.fit_chroma(chroma), lm.null_chroma.expand(B, -1, -1)])
    conditions = lm.conditions(text, text_mask, chroma, S)  # prefix (B', P, D), cross text, step melody
    # Steps before the first unknown token are known (start step + prompt): they are fed in one pass.
    unknown_steps = (sequence == unknown).any(dim=(0, 1)).nonzero()
    first = int(unknown_steps[0]) if len(unknown_steps) else S
    cache = KVCache() if use_cache else None
    fed = 0  # steps already inside the cache
    for s in range(first, S):  # predict step s from steps < s
        begin = fed if use_cache else 0  # with the cache only the new steps (the prefix goes with the first)
        step_input = sequence[..., begin:s]
        if cfg_coef is not None:
            step_input = torch.cat([step_input, step_input])
        logits = lm(step_input, conditions, cache=cache)[:, :, -1]  # (B', K, card)
        fed = s
        if cfg_coef is not None:
            # CFG mix (§3): l = l_null + γ·(l_cond − l_null); γ = 1 is the conditional model alone.
            cond, null = logits.chunk(2)
            logits = null + cfg_coef * (cond - null)
        tokens = sample_next_tokens(logits, use_sampling, temperature, top_k, top_p, generator)  # (B, K)
        # Write only where the pattern has a real token still unknown: the prompt is never overwritten.
        write = sequence[..., s] == unknown
        sequence[..., s] = torch.where(write, tokens, sequence[..., s])
    return lm.pattern.revert(sequence)  # (B, K, S) -> (B, K, T)
