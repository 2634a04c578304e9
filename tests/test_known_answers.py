"""Known answers for the steps a student changes in an exercise: each test here fails if one plausible
bug is planted (a multiplied temperature, a null branch that keeps the melody, a sliding window that
forgets its context, swapped hinge signs, an off-by-one warm-up, a melody crop or index at the wrong
place, a deleted straight-through estimator, a missing causal mask)."""
import math

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import losses as discriminator
import musicgen
import musicgen as sampling
from conditioners import ChromaExtractor, ConditionDropout, Tokenizer
from lm import LMConfig, LMModel
from musicgen import MusicGen, generate_codes, sample_next_tokens
from rvq import VectorQuantizer
from encodec import EncodecModel
from train import TINY_CODEC
from data import CodeWindows, window_plan
from stages import cosine_lr

CARD = 16


def tiny_lm(**changes):
    torch.manual_seed(0)
    cfg = LMConfig(**dict(dict(n_q=4, codebook_size=CARD, frame_rate=25.0, sample_rate=16000, dim=32, n_layers=2,
                               n_heads=2, ffn_dim=64, window_seconds=1.0, text_vocab_size=12, text_dim=16,
                               text_layers=1, text_heads=2, chroma_n_fft=8192, chroma_hop_length=2048), **changes))
    return LMModel(cfg).eval()


# ---- the sampler (§3): temperature, top-k, top-p against hand-computed distributions -----------------
def empirical(logits, n=40000, **kwargs):
    """Frequencies of each token over n seeded draws from one logit vector (card,)."""
    tokens = sample_next_tokens(logits.expand(n, 1, -1), generator=torch.Generator().manual_seed(0), **kwargs)
    return torch.bincount(tokens.flatten(), minlength=logits.numel()).float() / n


@pytest.mark.parametrize("kwargs, expected", [
    # softmax(l / T): T = 2 halves the logits (a multiplied temperature would give ~[0, 0, .02, .98])
    (dict(temperature=2.0, top_k=0), torch.softmax(torch.tensor([0.0, 0.5, 1.0, 1.5]), -1)),
    (dict(temperature=0.5, top_k=0), torch.softmax(torch.tensor([0.0, 2.0, 4.0, 6.0]), -1)),
    # top-k 2: the two largest, renormalised
    (dict(top_k=2), torch.tensor([0, 0, math.e ** 2, math.e ** 3]) / (math.e ** 2 + math.e ** 3)),
    # top-p 0.7: probabilities .644, .237, .087, .032 -> the smallest set reaching 0.7 is {3, 2}
    (dict(top_p=0.7), torch.tensor([0, 0, math.e ** 2, math.e ** 3]) / (math.e ** 2 + math.e ** 3)),
    (dict(top_p=0.5), torch.tensor([0.0, 0.0, 0.0, 1.0])),
])
def test_sampler_draws_the_hand_computed_distribution(kwargs, expected):
    assert torch.allclose(empirical(torch.tensor([0.0, 1.0, 2.0, 3.0]), **kwargs), expected, atol=0.01)


@pytest.mark.parametrize("uniform", [0.0, 1.0 - 2.0 ** -24])
@pytest.mark.parametrize("kwargs", [dict(top_k=2), dict(top_k=0, top_p=0.5)])
def test_extreme_uniform_draws_never_pick_a_token_the_filter_removed(monkeypatch, uniform, kwargs):
    """torch.rand's two extremes: 0 (which a left-sided search would place on a leading zero-probability
    token) and the largest float below 1 (which float rounding of the cumulative sum could push past the
    last kept token)."""
    monkeypatch.setattr(torch, "rand", lambda *shape, generator=None, device=None: torch.full(shape, uniform))
    logits = torch.tensor([[[5.0, 0.0, 6.0, 1.0, 0.5]]])  # kept: tokens 0 and 2 (top-k 2), 2 alone (top-p 0.5)
    token = int(sample_next_tokens(logits, **kwargs))
    assert token in ({0, 2} if "top_k" in kwargs and kwargs["top_k"] == 2 else {2})


def test_greedy_and_zero_temperature_take_the_argmax():
    logits = torch.randn(3, 4, CARD, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next_tokens(logits, use_sampling=False), logits.argmax(-1))
    assert torch.equal(sample_next_tokens(logits, temperature=0.0), logits.argmax(-1))


# ---- classifier-free guidance: the mix and the exact content of the null branch ---------------------
@pytest.mark.parametrize("fusions", [dict(melody_fusion="prepend"), dict(melody_fusion="sum"),
                                     dict(melody_fusion="prepend", text_fusion="prepend")])
def test_guidance_mixes_the_two_halves_and_the_null_half_has_no_condition(monkeypatch, fusions):
    lm = tiny_lm(**fusions)
    seen, mixed = [], []
    cond_logits, null_logits = torch.randn(4, 1, CARD), torch.randn(4, 1, CARD)  # (K, S=1, card)

    def fake_forward(sequence, conditions, cache=None):
        seen.append(conditions)
        B2, K, S = sequence.shape
        logits = torch.zeros(B2, K, S, CARD)
        logits[:B2 // 2], logits[B2 // 2:] = cond_logits, null_logits  # broadcast over (K, S)
        return logits

    def spy(logits, *args, **kwargs):
        mixed.append(logits.clone())
        return logits.argmax(-1)
    monkeypatch.setattr(lm, "forward", fake_forward)
    monkeypatch.setattr(sampling, "sample_next_tokens", spy)
    text, mask = torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool)
    # Pitch classes 1, 2, ...: none is class 0, the null melody's (the chroma of silence)
    chroma = torch.nn.functional.one_hot((torch.arange(lm.melody_frames) + 1) % 12, 12).float()[None]
    generate_codes(lm, text, mask, chroma, n_frames=3, cfg_coef=2.5)
    S = lm.pattern.num_steps(3)
    given = seen[0]
    conditional = lm.conditions(text, mask, chroma, S)  # what the conditional half must hold
    null = lm.conditions(torch.zeros_like(text), torch.zeros_like(mask), None, S)  # no text, the null melody
    assert not torch.equal(conditional.prefix if conditional.prefix is not None else conditional.steps,
                           null.prefix if null.prefix is not None else null.steps)  # the melody shows
    for half, expected in ((slice(0, 1), conditional), (slice(1, 2), null)):
        for name in ("prefix", "cross", "cross_mask", "steps"):
            got, want = getattr(given, name), getattr(expected, name)
            assert (got is None) == (want is None), name
            assert got is None or torch.equal(got[half], want), name
    assert torch.allclose(mixed[0], (null_logits + 2.5 * (cond_logits - null_logits))[:, 0])  # l_null + γ(l_cond − l_null)


def test_condition_dropout_nulls_text_and_melody_together_and_the_melody_alone():
    chroma = torch.ones(4000, 3, 12)
    texts, dropped = ConditionDropout(0.3, 0.5)(["a tune"] * 4000, chroma, torch.Generator().manual_seed(0))
    null_text = torch.tensor([t == "" for t in texts])
    null_melody = dropped.sum(dim=(1, 2)) == 0
    assert null_melody[null_text].all()  # the null condition drops both
    assert abs(null_text.float().mean() - 0.3) < 0.03
    assert abs(null_melody[~null_text].float().mean() - 0.5) < 0.03  # melody alone among the rest


# ---- sliding windows past the training window --------------------------------------------------------
def test_each_window_refeeds_the_previous_context_and_reads_the_melody_at_its_offset(monkeypatch):
    lm = tiny_lm(window_seconds=1.0)  # 25 frames
    codec = EncodecModel(TINY_CODEC.__class__(**{**TINY_CODEC.__dict__, "codebook_size": CARD, "n_filters": 4,
                                                 "ratios": (8, 5, 4, 4), "dimension": 8}))
    model = MusicGen(codec.eval(), lm, Tokenizer(["<pad>", "<unk>", "tune"]))
    model.set_generation_params(duration=2.0, extend_stride=0.6)  # 50 frames, stride 15, overlap 10
    calls = []

    def fake_generate_codes(lm, text, text_mask, chroma, n_frames, prompt=None, **kwargs):
        calls.append((prompt.clone(), chroma.clone(), n_frames))
        first = sum(c[2] - c[0].shape[-1] for c in calls[:-1])  # frames generated before this window
        new = (first + torch.arange(n_frames - prompt.shape[-1])) % CARD
        return torch.cat([prompt, new.expand(1, 4, -1)], dim=-1)
    monkeypatch.setattr(musicgen, "generate_codes", fake_generate_codes)
    melody = torch.zeros(1, 1, 16000 * 2)
    melody[..., 16000:] = torch.sin(2 * math.pi * 440 * torch.arange(16000) / 16000)  # A4 in the 2nd second only
    model.generate_with_chroma(["tune"], melody, 16000)
    windows = [(c[0].shape[-1], c[2]) for c in calls]
    assert windows[0] == (0, 25) and all(p == 10 for p, _ in windows[1:])  # the last 10 frames re-enter
    for (prompt, _, _), previous in zip(calls[1:], calls):
        assert prompt.shape[-1] == 10
    # The re-fed context is exactly the previous output's last 10 frames: frames 15..24 of a 0..24 ramp.
    assert calls[1][0][0, 0].tolist() == [t % CARD for t in range(15, 25)]
    # The window starting at frame 15 (0.6 s) reads the melody from 0.6 s: A4 begins 0.4 s into it.
    chroma = calls[1][1][0]  # (F, 12)
    a4 = chroma[:, 9] > 0
    rate = lm.chroma.frame_rate
    assert not a4[:round(0.3 * rate)].any() and a4[round(0.5 * rate):].all()


# ---- the melody: which chroma frame each step reads, and the training crop --------------------------
def test_each_step_reads_the_chroma_frame_of_its_time():
    lm = tiny_lm(melody_fusion="sum")
    F = lm.melody_frames
    chroma = torch.nn.functional.one_hot(torch.arange(F) % 12, 12).float()[None]  # frame f -> class f % 12
    with torch.no_grad():
        lm.melody_projection.weight.copy_(torch.eye(32, 12))  # the step's vector shows its class
    S = 12
    steps = lm.melody_steps(chroma, S)[0, :, :12].argmax(-1)  # (S,)
    expected = (lm.step_frames(S) / lm.cfg.frame_rate * lm.chroma.frame_rate).round().long() % 12
    assert torch.equal(steps, expected) and len(set(expected.tolist())) > 2


def test_training_windows_take_the_melody_of_the_same_frames(tmp_path):
    """A window of codes (frame t holds token t) and its melody audio (sample i holds i / 2^20, exact in
    float32): the audio must be the window's frames · hop samples, read from disk."""
    hop, window, n_frames = 10, 4, [20, 30]
    for i, n in enumerate(n_frames):
        sf.write(tmp_path / f"{i}.wav", np.arange(n * hop, dtype=np.float32) / 2 ** 20, 1000, subtype="FLOAT")
    codes = data.codes_array(tmp_path, "train", shape=(2, sum(n_frames)))
    codes[:] = np.concatenate([np.arange(n) for n in n_frames])[None]
    codes.flush()
    data.write_json_atomic(tmp_path / "index.json", {"train": {"entries": [0, 1], "offsets": [0, 20, 50]}})
    windows = CodeWindows(tmp_path, "train", tmp_path, ["0.wav", "1.wav"], 1000, hop, window)
    plan = window_plan(n_frames, torch.tensor([0, 1]), 6, window, torch.Generator().manual_seed(3))
    assert len({start for _, start in plan}) > 1
    for item in plan:
        crop, audio = windows[item]
        start = item[1]
        assert crop[0].tolist() == list(range(start, start + window))
        assert (audio[0] * 2 ** 20).tolist() == list(range(start * hop, (start + window) * hop))


def test_training_windows_keep_the_chroma_of_each_window(tmp_path):
    """With the LM's chroma extractor a window comes with the chroma of its melody audio, equal to the
    extractor on the audio read; once computed it is kept (the file is not read again: it may go), and
    with no memory for it every draw reads the file again."""
    hop, window, sr = 160, 100, 16000
    t = torch.arange(120 * hop) / sr
    sf.write(tmp_path / "0.wav", (0.5 * torch.sin(2 * math.pi * 440 * t) * (t < 0.5)).numpy(), sr, subtype="FLOAT")
    codes = data.codes_array(tmp_path, "train", shape=(1, 120))
    codes[:] = np.arange(120)[None]
    codes.flush()
    data.write_json_atomic(tmp_path / "index.json", {"train": {"entries": [0], "offsets": [0, 120]}})
    extractor = ChromaExtractor(sr, 4096, 1024, gate_silence=True)
    audio = CodeWindows(tmp_path, "train", tmp_path, ["0.wav"], sr, hop, window)
    kept = CodeWindows(tmp_path, "train", tmp_path, ["0.wav"], sr, hop, window, chroma=extractor)
    unkept = CodeWindows(tmp_path, "train", tmp_path, ["0.wav"], sr, hop, window, chroma=extractor, memo_bytes=0)
    items = [(0, 0), (0, 20)]
    wavs = [audio[item][1] for item in items]  # (1, T · hop) each
    expected = [extractor(wav[None])[0] for wav in wavs]
    assert not torch.equal(*expected)  # the A stops at 0.5 s: the two windows differ
    for item, chroma in zip(items, expected):
        assert torch.equal(kept[item][1], chroma) and torch.equal(unkept[item][1], chroma)
        assert chroma[0].argmax() == 9  # A
    (tmp_path / "0.wav").unlink()
    for item, chroma in zip(items, expected):
        got_codes, got = kept[item]
        assert torch.equal(got, chroma) and got_codes[0].tolist() == list(range(item[1], item[1] + window))
    with pytest.raises(data.DataError):
        unkept[items[0]]
    # Computed one window at a time, as the loader does, a batch's chroma is the batched one, exactly.
    batch = torch.stack(wavs + [0.3 * torch.randn(1, window * hop)])  # (3, 1, T · hop)
    assert torch.equal(torch.stack([extractor(wav[None])[0] for wav in batch]), extractor(batch))


# ---- the learning-rate schedule ------------------------------------------------------------------------
def test_warmup_then_cosine_to_a_tenth():
    lr = 1.0
    assert cosine_lr(0, 100, 10, lr) == pytest.approx(0.1)  # (step + 1) / warmup: never 0
    assert cosine_lr(9, 100, 10, lr) == pytest.approx(1.0)
    assert cosine_lr(10, 100, 10, lr) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 10, lr) == pytest.approx(0.55)  # half-way through the cosine
    assert cosine_lr(100, 100, 10, lr) == pytest.approx(0.1)
    assert cosine_lr(500, 100, 10, lr) == pytest.approx(0.1)


# ---- the codec's adversarial losses on hand-made outputs -------------------------------------------
def test_hinge_adversarial_and_feature_matching_losses_have_their_values():
    real = [(torch.tensor([2.0, 0.5]), [torch.tensor([1.0, -1.0])])]
    fake = [(torch.tensor([-2.0, 0.5]), [torch.tensor([0.0, -3.0])])]
    # relu(1 - 2), relu(1 - .5) -> mean .25;  relu(1 - 2), relu(1 + .5) -> mean .75
    assert discriminator.discriminator_hinge_loss(real, fake).item() == pytest.approx(1.0)
    assert discriminator.generator_adversarial_loss(fake).item() == pytest.approx(1.75)  # relu(3), relu(.5)
    # mean |real - fake| / mean |real| = (1 + 2) / 2 / 1
    assert discriminator.feature_matching_loss(real, fake).item() == pytest.approx(1.5)


# ---- gradients: straight-through estimator, causality ----------------------------------------------
def test_the_straight_through_estimator_passes_the_gradient_unchanged():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 16)
    x = torch.randn(2, 8, 5, requires_grad=True)
    vq.train()
    quantized = vq(x)[0]
    (quantized * torch.arange(5.0)).sum().backward()
    assert torch.allclose(x.grad, torch.arange(5.0).expand(2, 8, 5))  # d quantized / d x = identity


def test_the_encoder_learns_from_the_reconstruction_through_the_quantizer():
    torch.manual_seed(0)
    codec = EncodecModel(TINY_CODEC.__class__(**{**TINY_CODEC.__dict__, "codebook_size": CARD, "n_filters": 4,
                                                 "dimension": 8})).train()
    wav = torch.randn(2, 1, 3200)
    codec(wav)  # initialise the codebooks
    recon, _, _ = codec(wav)
    recon.pow(2).mean().backward()  # no commitment term: only the straight-through path reaches the encoder
    assert sum(p.grad.abs().sum() for p in codec.encoder.parameters() if p.grad is not None) > 0


def test_a_later_token_never_changes_an_earlier_prediction():
    lm = tiny_lm()
    sequence = torch.randint(0, CARD, (1, 4, 12), generator=torch.Generator().manual_seed(0))
    text, mask = torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool)
    changed = sequence.clone()
    changed[..., 7:] = (changed[..., 7:] + 1) % CARD
    with torch.no_grad():
        a, b = lm(sequence, lm.conditions(text, mask)), lm(changed, lm.conditions(text, mask))
    assert torch.allclose(a[..., :7, :], b[..., :7, :], atol=1e-6)
    assert not torch.allclose(a[..., 7:, :], b[..., 7:, :])


# ---- what a student could break unnoticed: the loss's composition, revival's statistics, "" ---------
def test_the_codec_loss_is_the_weighted_sum_of_its_terms_commitment_included():
    """L = λ_l1·L1 + λ_mel·L_mel + λ_pitch·L_semitone + λ_if·L_if + λ_c·L_commit, each weight its own."""
    from dataclasses import replace
    from losses import ReconstructionLoss
    cfg = replace(TINY_CODEC, l1_weight=0.3, mel_weight=2.0, pitch_weight=0.5, frequency_weight=0.25,
                  commitment_weight=1.5)
    loss_fn = ReconstructionLoss(cfg)
    g = torch.Generator().manual_seed(0)
    wav, recon = (0.3 * torch.randn(2, 1, 4096, generator=g) for _ in range(2))
    commitment = torch.tensor(0.7)
    terms = dict(l1=(recon - wav).abs().mean(), mel=loss_fn.mel(wav, recon), pitch=loss_fn.pitch(wav, recon),
                 frequency=loss_fn.frequency(wav, recon))
    assert all(value > 0 for value in terms.values())
    total, mel = loss_fn(wav, recon, commitment)
    expected = 0.3 * terms["l1"] + 2.0 * terms["mel"] + 0.5 * terms["pitch"] + 0.25 * terms["frequency"] + 1.5 * 0.7
    assert torch.allclose(total, expected, rtol=1e-6) and torch.equal(mel, terms["mel"])


def test_revival_writes_the_threshold_into_the_count_and_threshold_times_the_input_into_the_sum():
    """A revived entry e_j = x: count N_j = threshold, sum m_j = threshold · x (so m_j / N_j = x)."""
    vq = VectorQuantizer(dim=2, codebook_size=3, decay=0.9, dead_threshold=2.5)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [50.0, 50.0], [100.0, 100.0]]))
    vq.cluster_size.copy_(torch.tensor([6.0, 0.5, 4.0]))  # entry 1 alone is dead
    vq.embed_sum.copy_(vq.codebook * vq.cluster_size[:, None])
    x = torch.tensor([[1.0, 2.0]] * 4)
    assert vq.revive_dead_codes(x) == 1
    assert vq.cluster_size.tolist() == [6.0, 2.5, 4.0]
    assert vq.embed_sum[1].tolist() == [2.5, 5.0] and vq.codebook[1].tolist() == [1.0, 2.0]
    assert vq.embed_sum[0].tolist() == [0.0, 0.0] and vq.embed_sum[2].tolist() == [400.0, 400.0]  # untouched


def test_an_empty_description_is_the_null_condition_even_when_the_tokenizer_gives_it_a_token():
    """T5's tokenizer encodes "" as one token (</s>); MusicGen must still hand the LM an all-False mask
    for it (the null condition, as guidance's null half), and keep the other descriptions' tokens."""
    lm = tiny_lm()
    codec = EncodecModel(TINY_CODEC.__class__(**{**TINY_CODEC.__dict__, "codebook_size": CARD, "n_filters": 4,
                                                 "ratios": (8, 5, 4, 4), "dimension": 8}))  # 25 Hz, as the LM

    class EndToken:  # like t5.UnigramTokenizer: every text ends in </s> (id 1), "" included
        def encode(self, texts):
            rows = [[2, 3, 1] if text else [1] for text in texts]
            ids = torch.tensor([row + [0] * (3 - len(row)) for row in rows])
            return ids, ids != 0
    seen = []
    encode_text = lm.encode_text
    lm.encode_text = lambda ids, mask: seen.append(mask.clone()) or encode_text(ids, mask)
    model = MusicGen(codec.eval(), lm, EndToken())
    model.set_generation_params(duration=0.2)
    model.generate(["a tune", ""])
    assert seen[0].tolist() == [[True, True, True], [False, False, False]]
