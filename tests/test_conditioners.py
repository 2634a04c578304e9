"""Conditioners (conditioners.py): tokenizer, text encoder, chroma extractor, condition dropout."""
import math

import pytest
import torch

from audio import resample
from conditioners import ChromaExtractor, ConditionDropout, TextEncoder, Tokenizer, chroma_filterbank, word_dropout


def test_tokenizer_builds_a_sorted_vocabulary_and_round_trips():
    tok = Tokenizer.build(["A happy Flute, fast!", "sad strings", "a sad flute"])
    assert tok.vocab == ["<pad>", "<unk>", "a", "fast", "flute", "happy", "sad", "strings"]
    ids, mask = tok.encode(["sad flute", "a happy fast flute"])
    assert ids.shape == (2, 4) and mask.tolist() == [[True, True, False, False], [True] * 4]
    assert [tok.vocab[i] for i in ids[0, :2]] == ["sad", "flute"]
    assert Tokenizer(tok.vocab).encode(["sad flute"])[0].tolist() == ids[:1, :2].tolist()


def test_unknown_words_warn_and_map_to_unk():
    tok = Tokenizer.build(["sad flute"])
    with pytest.warns(UserWarning, match="kazoo"):
        ids, mask = tok.encode(["sad kazoo"])
    assert ids.tolist() == [[tok.index["sad"], 1]] and mask.all()


def test_empty_description_is_an_all_masked_row():
    ids, mask = Tokenizer.build(["sad flute"]).encode(["", "flute"])
    assert ids.shape == (2, 1) and mask.tolist() == [[False], [True]]


def test_numbers_accents_and_punctuation_are_read_on_purpose():
    tok = Tokenizer.build(["a cafe tune at 120 bpm"])
    ids, mask = tok.encode(["Café tune, 120 BPM!"])
    assert [tok.vocab[i] for i in ids[0]] == ["cafe", "tune", "120", "bpm"] and mask.all()
    with pytest.warns(UserWarning, match="unknown word '90'"):
        ids, mask = tok.encode(["90"])
    assert mask.all() and ids.tolist() == [[1]]  # a number is a word (<unk> here), never the null condition
    with pytest.warns(UserWarning, match="no word"):
        _, mask = tok.encode(["!!!"])
    assert not mask.any()  # said out loud: read as the null condition


def test_a_description_longer_than_the_text_encoder_is_refused():
    encoder = TextEncoder(10, 16, 1, 2, out_dim=8, max_len=4)
    encoder(torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="5 words is longer than the text encoder's 4 positions"):
        encoder(torch.ones(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool))


def test_text_encoder_null_row_is_zero_and_finite_with_finite_gradients():
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=10, dim=16, n_layers=2, n_heads=2, out_dim=8)
    ids = torch.tensor([[2, 3, 4], [0, 0, 0]])
    mask = ids != 0
    out, out_mask = encoder(ids, mask)
    assert out.shape == (2, 3, 8) and torch.isfinite(out).all()
    assert (out[1] == 0).all() and out[0].abs().sum() > 0
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_text_encoder_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    encoder = TextEncoder(vocab_size=10, dim=16, n_layers=2, n_heads=2, out_dim=8).eval()
    mask = torch.tensor([[True, True, False, False]])
    a, _ = encoder(torch.tensor([[2, 3, 0, 0]]), mask)
    b, _ = encoder(torch.tensor([[2, 3, 7, 9]]), mask)  # other ids under the padding
    assert torch.allclose(a, b, atol=1e-6) and (a[0, 2:] == 0).all()


def test_word_dropout():
    g = torch.Generator().manual_seed(0)
    texts = ["a b c d e f g h"] * 50
    assert word_dropout(texts, 0.0, g) == texts
    assert word_dropout(texts, 1.0, g) == [""] * 50
    kept = sum(len(t.split()) for t in word_dropout(texts, 0.3, g)) / (8 * 50)
    assert abs(kept - 0.7) < 0.06
    again = [word_dropout(texts, 0.3, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert again[0] == again[1]


def tone(midi, seconds, sample_rate, harmonics=1):
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    f = 440.0 * 2 ** ((midi - 69) / 12)
    return sum(torch.sin(2 * math.pi * h * f * t) / h for h in range(1, harmonics + 1) if h * f < sample_rate / 2)


@pytest.mark.parametrize("sample_rate", [16000, 32000])
def test_c_major_scale_gives_its_pitch_classes(sample_rate):
    """Known answer: C4 D4 E4 F4 G4 A4 B4 C5 → pitch classes 0 2 4 5 7 9 11 0."""
    chroma = ChromaExtractor(sample_rate)
    notes = [60, 62, 64, 65, 67, 69, 71, 72]
    wav = torch.cat([0.5 * tone(m, 0.75, sample_rate) for m in notes])[None, None]  # (1, 1, N)
    out = chroma(wav)  # (1, F, 12)
    assert out.shape == (1, wav.shape[-1] // chroma.hop_length + 1, 12)
    assert abs(chroma.frame_rate - sample_rate / chroma.hop_length) < 1e-9
    centre = [round((i + 0.5) * 0.75 * chroma.frame_rate) for i in range(len(notes))]  # a frame inside each note
    assert out[0, centre].argmax(-1).tolist() == [0, 2, 4, 5, 7, 9, 11, 0]
    assert (out.sum(-1) == 1).all()  # one-hot, even the silent padding (the reference's null melody: C)


def test_chroma_of_a_sawtooth_follows_its_fundamental_and_accepts_stereo():
    chroma = ChromaExtractor(16000)
    saw = 0.3 * tone(50, 1.5, 16000, harmonics=20)  # D3 with 20 harmonics
    stereo = torch.stack([saw, saw])[None]  # (1, 2, N)
    out = chroma(stereo)
    mid = out.shape[1] // 2
    assert out[0, mid].argmax().item() == 2


def test_silence_is_one_hot_c_or_zero_with_the_gate_and_resampling_path():
    silence = torch.zeros(2, 1, 16000)
    assert (ChromaExtractor(16000)(silence).argmax(-1) == 0).all()
    assert ChromaExtractor(16000, gate_silence=True)(silence).abs().sum() == 0
    chroma = ChromaExtractor(16000)
    wav = 0.5 * tone(67, 1.0, 44100)[None, None]  # G4 at 44.1 kHz
    out = chroma(resample(wav, 44100, 16000))
    assert out[0, 3].argmax().item() == 7


def test_filterbank_peaks_on_the_right_pitch_class():
    bank = chroma_filterbank(16000, 8192)
    a440_bin = round(440 * 8192 / 16000)
    assert bank[:, a440_bin].argmax().item() == 9  # A
    assert bank[:, round(261.63 * 8192 / 16000)].argmax().item() == 0  # C4
    # Octave weighting: a Gaussian over octaves around A5 (880 Hz), half-width 2 octaves.
    a = lambda f: bank[9, round(f * 8192 / 16000)].item()
    for f, octaves in [(55, -4), (220, -2), (7040, 3)]:
        assert abs(a(f) / a(880) - math.exp(-0.5 * (octaves / 2) ** 2)) < 0.01


def test_condition_dropout_rates_and_extremes():
    chroma = torch.ones(4000, 3, 12)
    texts = ["sad flute"] * 4000
    g = torch.Generator().manual_seed(0)
    all_null = ConditionDropout(1.0, 0.0)(texts[:5], chroma[:5], g)
    assert all_null[0] == [""] * 5 and all_null[1].sum() == 0
    same = ConditionDropout(0.0, 0.0)(texts[:5], chroma[:5], g)
    assert same[0] == texts[:5] and torch.equal(same[1], chroma[:5])
    dropped_texts, dropped_chroma = ConditionDropout(0.3, 0.5)(texts, chroma, g)
    null_text = torch.tensor([t == "" for t in dropped_texts])
    no_melody = dropped_chroma.sum(dim=(1, 2)) == 0
    assert abs(null_text.float().mean() - 0.3) < 0.03
    assert no_melody[null_text].all()  # the null condition drops everything
    assert abs(no_melody[~null_text].float().mean() - 0.5) < 0.04
