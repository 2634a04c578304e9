"""conditioners.ChromaExtractor against the reference: HF transformers' MusicgenMelodyFeatureExtractor.

The reference extractor class needs torchaudio, which this project does not install, so its
computation (`_torch_extract_fbank_features`) is rebuilt here from its parts: transformers' own
`chroma_filter_bank`, and torch.stft configured as torchaudio's Spectrogram(power=2, normalized=True)
(centred, reflect padding, periodic Hann window, spectrum divided by sqrt(Σ w²)).
"""
import math

import pytest
import torch

from conditioners import ChromaExtractor, ConditionDropout, chroma_filterbank

audio_utils = pytest.importorskip("transformers.audio_utils")

SR, N_FFT, HOP = 32000, 2 ** 14, 2 ** 12  # the paper's and the reference's settings


def reference_chroma(wav, sample_rate=SR, n_fft=N_FFT, hop_length=HOP, argmax=True):
    """The reference's chroma of mono audio wav (B, N) → (B, F, 12)."""
    bank = torch.from_numpy(audio_utils.chroma_filter_bank(
        num_frequency_bins=n_fft, num_chroma=12, sampling_rate=sample_rate, tuning=0)).float()
    if wav.shape[-1] < n_fft:
        pad = n_fft - wav.shape[-1]
        wav = torch.nn.functional.pad(wav, (pad // 2, pad // 2 + pad % 2), "constant", 0)
    window = torch.hann_window(n_fft)
    spec = torch.stft(wav, n_fft, hop_length, window=window, center=True, pad_mode="reflect",
                      normalized=False, onesided=True, return_complex=True)
    spec = (spec / window.pow(2).sum().sqrt()).abs().pow(2)  # (B, n_bins, F)
    raw = torch.einsum("cf,...ft->...ct", bank, spec)  # (B, 12, F)
    chroma = torch.nn.functional.normalize(raw, p=float("inf"), dim=-2, eps=1e-6).transpose(1, 2)
    if not argmax:
        return chroma
    return torch.zeros_like(chroma).scatter_(-1, chroma.argmax(-1, keepdim=True), 1.0)


def tone(midi, seconds, sample_rate=SR, amplitude=0.5):
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    return amplitude * torch.sin(2 * math.pi * 440.0 * 2 ** ((midi - 69) / 12) * t)


TWO_NOTES = torch.cat([tone(69, 1.0), tone(73, 1.0)])  # A4 then C#5
CHORD = (tone(60, 2.0) + tone(64, 2.0) + tone(67, 2.0)) / 3  # C-E-G


@pytest.mark.parametrize("sample_rate, n_fft", [(32000, 16384), (16000, 8192)])
def test_filterbank_equals_transformers(sample_rate, n_fft):
    reference = torch.from_numpy(audio_utils.chroma_filter_bank(
        num_frequency_bins=n_fft, num_chroma=12, sampling_rate=sample_rate, tuning=0.0))  # float64
    ours = chroma_filterbank(sample_rate, n_fft)  # float32
    assert ours.shape == reference.shape == (12, n_fft // 2 + 1) and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), reference, rtol=2e-7, atol=1e-12)  # float32 rounding


@pytest.mark.parametrize("wav", [TWO_NOTES, CHORD], ids=["A4 then C#5", "C-E-G"])
def test_one_hot_and_raw_chroma_equal_the_reference(wav):
    ours = ChromaExtractor(SR)(wav[None, None])  # (1, F, 12)
    reference = reference_chroma(wav[None])
    assert ours.shape == reference.shape == (1, len(wav) // HOP + 1, 12)
    assert torch.equal(ours, reference)
    raw = ChromaExtractor(SR, argmax=False)(wav[None, None])
    torch.testing.assert_close(raw, reference_chroma(wav[None], argmax=False), rtol=1e-4, atol=1e-7)


def test_the_two_notes_are_found():
    out = ChromaExtractor(SR)(TWO_NOTES[None, None])[0].argmax(-1)
    assert out[2:6].tolist() == [9] * 4 and out[10:14].tolist() == [1] * 4  # A, then C#


@pytest.mark.parametrize("n", [5000, 5001, N_FFT - 1])
def test_short_inputs_are_zero_padded_on_both_sides_as_the_reference(n):
    wav = tone(64, n / SR)[None] * torch.linspace(0.2, 1.0, n)  # an asymmetric envelope: the side matters
    for argmax in (True, False):
        ours = ChromaExtractor(SR, argmax=argmax)(wav[None])
        reference = reference_chroma(wav, argmax=argmax)
        assert ours.shape == reference.shape == (1, N_FFT // HOP + 1, 12)
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-7)


def test_silence_is_one_hot_c_as_the_reference_or_zero_with_the_gate():
    silence = torch.zeros(2, 1, SR)
    ours = ChromaExtractor(SR)(silence)
    assert torch.equal(ours, reference_chroma(silence[:, 0]))
    assert (ours[..., 0] == 1).all() and ours.sum() == ours.shape[0] * ours.shape[1]
    assert ChromaExtractor(SR, gate_silence=True)(silence).abs().sum() == 0


def test_the_gate_keeps_a_quiet_note_and_drops_what_is_below_the_threshold():
    gated = ChromaExtractor(SR, gate_silence=True)
    frames = slice(2, 6)
    loud = gated(tone(69, 2.0, amplitude=0.05)[None, None])[0, frames]
    assert (loud[:, 9] == 1).all()  # -26 dB: kept, an A
    assert gated(tone(69, 2.0, amplitude=0.0005)[None, None])[0, frames].abs().sum() == 0  # -66 dB


def test_condition_dropout_puts_the_null_chroma_where_the_melody_is_dropped():
    B, F = 400, 5
    chroma = torch.rand(B, F, 12)
    null = ChromaExtractor(SR)(torch.zeros(1, 1, (F - 1) * HOP))  # (1, F, 12): one-hot C
    texts = ["a tune"] * B
    zeros_texts, zeros = ConditionDropout(0.3, 0.5)(texts, chroma, torch.Generator().manual_seed(0))
    for shape in [(F, 12), (1, F, 12)]:
        new_texts, out = ConditionDropout(0.3, 0.5)(texts, chroma, torch.Generator().manual_seed(0),
                                                    null_chroma=null.reshape(shape))
        dropped = zeros.sum(dim=(1, 2)) == 0  # the same draws as without null_chroma
        assert new_texts == zeros_texts and 0 < dropped.sum() < B
        assert torch.equal(out[dropped], null.expand(int(dropped.sum()), F, 12))
        assert torch.equal(out[~dropped], chroma[~dropped])
