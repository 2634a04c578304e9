"""The LM and its sampler (musicgen.py): loss, CFG, sampling, KV cache, prompts, reproducibility."""
import math

import pytest
import torch
import torch.nn.functional as F

from lm import LMConfig, LMModel
from musicgen import generate_codes, sample_next_tokens
from patterns import PATTERN_NAMES, make_pattern
from transformer import Transformer

CARD = 16  # a tiny codebook keeps the tests fast


FUSIONS = [dict(melody_fusion="prepend"), dict(melody_fusion="sum"),
           dict(melody_fusion="prepend", text_fusion="prepend")]  # the paper's, the tiny's, musicgen-melody's


def tiny_lm(pattern="delay", seed=0, input_codebooks=None, **changes):
    """input_codebooks None (the paper's: every codebook read) by default; the tiny preset reads 1.
    The paper's fusions (melody prepended, text cross-attended) unless `changes` say otherwise."""
    torch.manual_seed(seed)
    cfg = LMConfig(n_q=4, codebook_size=CARD, frame_rate=25.0, sample_rate=16000, dim=32, n_layers=2, n_heads=2,
                   ffn_dim=64, pattern=pattern, window_seconds=1.0, text_vocab_size=12, text_dim=16,
                   text_layers=1, text_heads=2, input_codebooks=input_codebooks, chroma_n_fft=8192,
                   chroma_hop_length=2048, **changes)
    return LMModel(cfg).eval()


def conditions(lm, B=2, null=False):
    """Encoded text (B, L, D), its mask, and a one-hot chroma (B, F, 12) (null: no text, the null melody)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 12, (B, 5), generator=g)
    mask = torch.ones(B, 5, dtype=torch.bool)
    if null:
        mask[:] = False
    text, text_mask = lm.encode_text(ids, mask)
    chroma = lm.null_chroma.expand(B, -1, -1).clone()
    if not null:
        chroma[:] = 0
        chroma[torch.arange(B)[:, None], torch.arange(lm.melody_frames), torch.randint(0, 12, (B, lm.melody_frames), generator=g)] = 1
    return text, text_mask, chroma


def random_codes(B, T, seed=0):
    return torch.randint(0, CARD, (B, 4, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pattern", ["delay", "flatten", "vall-e"])
def test_loss_at_initialisation_is_near_ln_codebook_size(pattern):
    lm = tiny_lm(pattern)
    text, mask, chroma = conditions(lm)
    loss, per_codebook = lm.compute_loss(random_codes(2, 25), text, mask, chroma)
    assert per_codebook.shape == (4,)
    assert abs(loss.item() - math.log(CARD)) < 0.15 * math.log(CARD)


def test_loss_weights_the_first_frames_and_reports_the_plain_cross_entropy():
    """Hand-computed: the objective is the frame-weighted mean; per_codebook stays the plain mean."""
    lm = tiny_lm("parallel")  # parallel: output step t predicts frame t for every codebook, all valid
    lm.cfg.start_frames, lm.cfg.start_weight = 2, 3.0
    text, mask, chroma = conditions(lm)
    codes = random_codes(2, 6)
    with torch.no_grad():
        loss, per_codebook = lm.compute_loss(codes, text, mask, chroma)
        sequence, _ = lm.pattern.build(codes, lm.special)
        logits, valid = lm.pattern.revert_logits(lm(sequence, lm.conditions(text, mask, chroma, sequence.shape[-1])))
    assert valid.all()
    ce = F.cross_entropy(logits.permute(0, 3, 1, 2), codes, reduction="none")  # (B, K, T)
    weight = torch.tensor([3.0, 3.0, 1.0, 1.0, 1.0, 1.0])  # frames 0, 1 weigh 3
    expected = ((ce * weight).sum(dim=(0, 2)) / (weight.sum() * 2)).mean()
    assert torch.allclose(loss, expected, atol=1e-5)
    assert torch.allclose(per_codebook, ce.mean(dim=(0, 2)), atol=1e-5)
    lm.cfg.start_weight = 1.0  # the paper's plain mean
    with torch.no_grad():
        plain, _ = lm.compute_loss(codes, text, mask, chroma)
    assert torch.allclose(plain, ce.mean(), atol=1e-5)


def test_loss_ignores_special_positions():
    """Output steps whose next step holds a special token for codebook k get no gradient in head k."""
    lm = tiny_lm("delay")
    text, mask, chroma = conditions(lm)
    head_outputs = []

    def keep_output(module, inputs, output):
        output.retain_grad()
        head_outputs.append(output)

    for head in lm.heads:  # head k's output (B, S, card)
        head.register_forward_hook(keep_output)
    T = 10
    loss, _ = lm.compute_loss(random_codes(2, T), text, mask, chroma)
    loss.backward()
    _, real = lm.pattern.build(random_codes(1, T), lm.special)  # (K, S): True where step s holds a real token
    for k in range(lm.cfg.n_q):
        grad_norm = head_outputs[k].grad.abs().sum(dim=(0, 2))  # (B, S, card) -> (S,)
        predicts_real = torch.zeros_like(real[k])
        predicts_real[:-1] = real[k][1:]  # output at step s predicts step s+1
        assert (grad_norm[~predicts_real] == 0).all()
        assert (grad_norm[predicts_real] > 0).all()


@pytest.mark.parametrize("input_codebooks", [4, 1])
def test_the_summed_embedding_tables_read_table_k_for_codebook_k_and_reject_bad_tokens(input_codebooks):
    """Token x of codebook k reads table k, row x, and only the first input_codebooks codebooks are read."""
    lm = tiny_lm(input_codebooks=input_codebooks)
    text, mask, _ = conditions(lm)
    sequence = torch.randint(0, CARD + 1, (2, 4, 6), generator=torch.Generator().manual_seed(3))
    assert len(lm.embeddings) == input_codebooks
    expected = sum(lm.embeddings[k].weight[sequence[:, k]] for k in range(input_codebooks))  # Σ_k Emb_k(x_k)
    seen = []
    lm.transformer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    with torch.no_grad():
        lm(sequence, lm.conditions(text, mask))
    assert torch.allclose(seen[0][:, -6:], expected, atol=1e-6)  # after the melody prefix: the 6 steps
    for bad in (-1, CARD + 1):  # -1 = a still-unknown token fed by mistake; CARD + 1 would read table k + 1
        sequence[0, 1, 2] = bad
        with pytest.raises(ValueError, match="tokens must be in"):
            lm(sequence, lm.conditions(text, mask))


def test_null_condition_gives_finite_logits():
    lm = tiny_lm()
    text, mask, chroma = conditions(lm, null=True)
    assert not mask.any() and torch.equal(chroma[:1], lm.null_chroma)
    sequence, _ = lm.pattern.build(random_codes(2, 8), lm.special)
    logits = lm(sequence, lm.conditions(text, mask, chroma, sequence.shape[-1]))
    assert torch.isfinite(logits).all()
    codes = generate_codes(lm, text, mask, chroma, n_frames=6, cfg_coef=3.0,
                           generator=torch.Generator().manual_seed(0))
    assert codes.shape == (2, 4, 6) and codes.min() >= 0 and codes.max() < CARD


def test_cfg_coef_one_equals_conditional_sampling():
    lm = tiny_lm()
    text, mask, chroma = conditions(lm)
    kwargs = dict(n_frames=12, top_k=0, temperature=1.0)
    with_cfg = generate_codes(lm, text, mask, chroma, cfg_coef=1.0, generator=torch.Generator().manual_seed(3), **kwargs)
    plain = generate_codes(lm, text, mask, chroma, cfg_coef=None, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(with_cfg, plain)
    guided = generate_codes(lm, text, mask, chroma, cfg_coef=3.0, generator=torch.Generator().manual_seed(3), **kwargs)
    assert not torch.equal(guided, plain)  # the guidance does change something


def test_top_k_one_equals_greedy():
    logits = torch.randn(3, 4, CARD)
    greedy = sample_next_tokens(logits, use_sampling=False)
    top1 = sample_next_tokens(logits, use_sampling=True, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, top1) and torch.equal(greedy, logits.argmax(-1))


def test_top_p_keeps_the_nucleus_only():
    # probabilities 0.5, 0.3, 0.2: top-p 0.6 keeps the first two, never samples the third.
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))[None, None].expand(1, 2000, 3)
    tokens = sample_next_tokens(logits, top_p=0.6, generator=torch.Generator().manual_seed(0))
    assert set(tokens.unique().tolist()) == {0, 1}
    assert abs((tokens == 0).float().mean().item() - 0.5 / 0.8) < 0.04


def test_reading_codebook_one_only_ignores_the_finer_inputs():
    """input_codebooks = 1 (the tiny preset): the finer codebooks' tokens change no output; with all
    four read (the paper) they do. All K heads still predict."""
    for input_codebooks, ignored in ((1, True), (4, False)):
        lm = tiny_lm(input_codebooks=input_codebooks)
        text, mask, _ = conditions(lm)
        sequence, _ = lm.pattern.build(random_codes(2, 8), lm.special)  # (B, K, S)
        other = sequence.clone()
        other[:, 1:] = (other[:, 1:] + 1) % CARD  # new tokens in codebooks 2..4 only
        with torch.no_grad():
            logits, changed = lm(sequence, lm.conditions(text, mask)), lm(other, lm.conditions(text, mask))
        assert logits.shape[1] == 4
        assert torch.equal(logits, changed) == ignored


@pytest.mark.parametrize("input_codebooks, fusions", [(4, f) for f in FUSIONS] + [(1, FUSIONS[0])])
def test_same_seed_same_codes_with_and_without_cache(input_codebooks, fusions):
    lm = tiny_lm(input_codebooks=input_codebooks, **fusions)
    text, mask, chroma = conditions(lm)
    runs = [generate_codes(lm, text, mask, chroma, n_frames=20, cfg_coef=3.0, top_k=8, use_cache=use_cache,
                           generator=torch.Generator().manual_seed(7)) for use_cache in (True, True, False)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    other = generate_codes(lm, text, mask, chroma, n_frames=20, cfg_coef=3.0, top_k=8,
                           generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


@pytest.mark.parametrize("pattern, input_codebooks, fusions", [(p, None, FUSIONS[0]) for p in PATTERN_NAMES]
                         + [(p, 1, FUSIONS[0]) for p in ("delay", "parallel", "partial-delay")]
                         + [("delay", None, f) for f in FUSIONS[1:]])
def test_prompt_is_kept_and_continuation_matches_one_pass(pattern, input_codebooks, fusions):
    """Greedy decoding is deterministic, so continuing the first frames of a greedy run must give the
    whole run back: this holds only if the prompt is kept verbatim and the continuation's tokens get
    the positions they had in the single pass (after the prefix, if any)."""
    lm = tiny_lm(pattern, input_codebooks=input_codebooks, **fusions)
    text, mask, chroma = conditions(lm)
    full = generate_codes(lm, text, mask, chroma, n_frames=15, use_sampling=False, cfg_coef=3.0)
    prompt = full[..., :6].clone()
    for use_cache in (True, False):
        continued = generate_codes(lm, text, mask, chroma, n_frames=15, prompt=prompt, use_sampling=False,
                                   cfg_coef=3.0, use_cache=use_cache)
        assert torch.equal(continued[..., :6], prompt)
        assert torch.equal(continued, full)
    # A different prompt is kept verbatim too (the sampler never overwrites it).
    other = (prompt + 1) % CARD
    continued = generate_codes(lm, text, mask, chroma, n_frames=15, prompt=other, use_sampling=False)
    assert torch.equal(continued[..., :6], other)


@pytest.mark.parametrize("pattern", ["flatten", "partial-flatten", "vall-e"])
def test_reading_codebook_1_only_is_refused_where_the_pattern_needs_the_others(pattern):
    """These patterns put codebooks 2..K on steps of their own: an LM reading codebook 1 would never
    see them, so the config is refused (train.py turns the error into one line), not silently trained."""
    with pytest.raises(ValueError, match="input_codebooks"):
        tiny_lm(pattern, input_codebooks=1)
    tiny_lm(pattern, input_codebooks=None)  # every codebook read: fine


def test_tiny_lm_overfits_one_batch():
    lm = tiny_lm().train()
    text_ids = torch.randint(2, 12, (4, 5), generator=torch.Generator().manual_seed(0))
    codes = random_codes(4, 12, seed=5)
    chroma = torch.zeros(4, lm.melody_frames, 12)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        text, mask = lm.encode_text(text_ids, torch.ones(4, 5, dtype=torch.bool))
        loss, _ = lm.compute_loss(codes, text, mask, chroma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::25]


def test_paper_config_decoder_size():
    """MusicGen-small's decoder: 24 blocks of (self-attention 4D² + cross-attention 4D² + FFN 2·D·4D), plus
    K input embeddings of (2048 + 1) rows and K output heads; built on the meta device (no memory)."""
    cfg = LMConfig()
    D, ffn = cfg.dim, cfg.ffn_dim
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, ffn) == (1024, 24, 16, 4096)
    with torch.device("meta"):
        decoder = Transformer(D, cfg.n_layers, cfg.n_heads, ffn, cross_attention=True)
    n_decoder = sum(p.numel() for p in decoder.parameters())
    per_block = 4 * D * D + 4 * D * D + 2 * D * ffn + 3 * 2 * D  # + three LayerNorms (gain and bias)
    assert n_decoder == cfg.n_layers * per_block + 2 * D  # + the final LayerNorm
    n_tokens = cfg.n_q * (cfg.codebook_size + 1) * D + cfg.n_q * D * cfg.codebook_size
    assert 400e6 < n_decoder + n_tokens < 430e6  # our count; the paper rounds this model to "300M"
    assert cfg.frame_rate * 30 == 1500  # 30 s training windows of 50 Hz frames


@pytest.mark.parametrize("pattern, expected", [
    ("delay", [0, 1, 2, 3, 4, 4, 4, 4, 4]),             # step s predicts codebook 1 of frame s
    ("flatten", [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 5),
    ("vall-e", [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 4]),      # codebook 1 of every frame, then the rest again
])
def test_each_step_reads_the_melody_of_the_frame_it_predicts(pattern, expected):
    lm = tiny_lm(melody_fusion="sum")
    lm.pattern = make_pattern(pattern, 4)
    S = lm.pattern.build(random_codes(1, 5), lm.special)[0].shape[-1]
    assert lm.step_frames(S).tolist() == expected
    # An all-zero chroma (gated silence) adds nothing to any step: the "sum" projection has no bias.
    chroma = torch.zeros(1, lm.melody_frames, 12)
    assert lm.melody_steps(chroma, S).abs().sum() == 0
