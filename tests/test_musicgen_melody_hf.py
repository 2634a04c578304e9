"""musicgen-melody in our modules (pretrained.py) against HF transformers' MusicgenMelodyForConditionalGeneration.

The published melody model has no cross-attention: the projected chroma frames (a fixed number,
`chroma_length`) and then the projected T5 states stand before the first token, and the decoder
attends to them causally (paper §2.4, the "prepend" fusions of lm.py). The reference here is a tiny
random HF melody model saved with `save_pretrained` (text width 32 != decoder width 16, random
codebooks), plus the preprocessor_config.json of the published folder, which sets the chroma's sizes.
HF's feature extractor needs torchaudio, which is not installed: both models get the chroma our
extractor computes (tests/test_chroma_hf.py checks that it is the reference's).
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from audio import write_audio
from musicgen import MusicGen
from published.pretrained import PretrainedError
from test_musicgen_hf import CARD, DESCRIPTIONS, K, broken_copy, hf_text, randomize, save

transformers = pytest.importorskip("transformers")

SAMPLE_RATE, N_FFT, HOP = 8000, 4096, 2048
CHROMA_LENGTH = 30 * SAMPLE_RATE // HOP + 1  # the chroma frames of a 30 s window (centred STFT): 118


def tiny_reference():
    """A random HF musicgen-melody in the published layout, scaled down (see the module docstring)."""
    torch.manual_seed(0)
    text = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=128, num_layers=2, num_heads=4)
    ratios = [2, 2]  # hop 4: 2000 frames per second
    bandwidth = K * math.log2(CARD) * math.ceil(SAMPLE_RATE / math.prod(ratios)) / 1000  # HF derives K from it
    audio = transformers.EncodecConfig(sampling_rate=SAMPLE_RATE, target_bandwidths=[bandwidth], hidden_size=16,
                                       num_filters=4, upsampling_ratios=ratios, codebook_size=CARD, num_lstm_layers=2,
                                       use_causal_conv=False, use_conv_shortcut=False, normalize=False)
    decoder = transformers.MusicgenMelodyDecoderConfig(vocab_size=CARD, num_codebooks=K, hidden_size=16,
                                                       num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                                       pad_token_id=CARD, bos_token_id=CARD)
    config = transformers.MusicgenMelodyConfig(text_encoder=text, audio_encoder=audio, decoder=decoder,
                                               chroma_length=CHROMA_LENGTH)
    model = randomize(transformers.MusicgenMelodyForConditionalGeneration(config).eval())
    with torch.no_grad():
        model.audio_enc_to_dec_proj.weight.normal_()  # a strong melody, so a wrong chroma shows in the tokens
        for layer in model.decoder.model.decoder.layers:  # peaked attention: a uniform one would average the prefix away
            layer.self_attn.q_proj.weight.normal_(0, 0.5)
            layer.self_attn.k_proj.weight.normal_(0, 0.5)
    assert hasattr(model, "enc_to_dec_proj") and not hasattr(model.decoder.model.decoder.layers[0], "encoder_attn")
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_melody(tmp_path_factory)


def save_melody(tmp_path_factory):
    """tiny_reference() saved as a published folder, its preprocessor_config.json included → (model, folder)."""
    reference = tiny_reference()
    folder = save(reference, tmp_path_factory, "musicgen_melody")
    (folder / "preprocessor_config.json").write_text(json.dumps(dict(
        feature_extractor_type="MusicgenMelodyFeatureExtractor", feature_size=12, num_chroma=12, chunk_length=30,
        sampling_rate=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, padding_value=0.0, stem_indices=[3, 2])))
    return reference, folder


@pytest.fixture(scope="module")
def ours(saved):
    return MusicGen.from_pretrained(saved[1])


def two_notes(seconds=1.5):
    """A4 then E5 (pitch classes 9 and 4), half each: (1, 1, N) at SAMPLE_RATE."""
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    freq = torch.where(t < seconds / 2, 440.0, 659.26)
    return (0.5 * torch.sin(2 * math.pi * torch.cumsum(freq, 0) / SAMPLE_RATE))[None, None]


def test_the_melody_layout_loads_with_the_folders_chroma_sizes(ours):
    cfg = ours.lm.cfg
    assert (cfg.text_fusion, cfg.melody_fusion) == ("prepend", "prepend")
    assert (ours.lm.chroma.n_fft, ours.lm.chroma.hop_length, ours.lm.melody_frames) == (N_FFT, HOP, CHROMA_LENGTH)
    assert all(block.cross_attention is None for block in ours.lm.transformer.blocks)
    assert ours.lm.melody_projection.bias is not None


def test_decoder_logits_with_a_chroma_match_hf(saved, ours):
    """Tokens, text and a short chroma (repeated to chroma_length by both) through both decoders."""
    reference, folder = saved
    S = 21
    sequence = torch.randint(0, CARD + 1, (2, K, S), generator=torch.Generator().manual_seed(1))  # (B, K, S)
    ids, mask = hf_text(reference, folder, DESCRIPTIONS)
    chroma = ours.lm.chroma(torch.cat([two_notes(), two_notes().flip(-1)]))  # (2, F', 12)
    assert 1 < chroma.shape[1] < CHROMA_LENGTH and len(chroma.argmax(-1).unique()) > 1
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, input_features=chroma,
                             decoder_input_ids=sequence.reshape(2 * K, -1)).logits  # (B·K, P + S, card)
        text, text_mask = ours.lm.encode_text(ids, mask.bool())
        logits = ours.lm(sequence, ours.lm.conditions(text, text_mask, chroma))  # (B, K, S, card)
        other = ours.lm(sequence, ours.lm.conditions(text, text_mask, None))  # the null melody
    torch.testing.assert_close(logits, expected[:, -S:].reshape(2, K, S, CARD), atol=1e-4, rtol=0)
    assert (logits - other).abs().max() > 1e-3  # the melody matters (float noise: ~1e-6)


def run_both(saved, ours, monkeypatch, melody, n_frames=32):
    """Greedy generation with guidance 3 by HF and by us → (HF codes, our codes), each (B, K, n_frames)."""
    reference, folder = saved
    hf_codes, ours_codes = [], []
    hf_decode, our_decode = reference.audio_encoder.decode, ours.codec.decode
    monkeypatch.setattr(reference.audio_encoder, "decode",
                        lambda codes, *a, **kw: hf_codes.append(codes) or hf_decode(codes, *a, **kw))
    monkeypatch.setattr(ours.codec, "decode", lambda codes: ours_codes.append(codes) or our_decode(codes))
    ids, mask = hf_text(reference, folder, DESCRIPTIONS)
    features = {} if melody is None else dict(input_features=ours.lm.chroma(melody))
    with torch.no_grad():
        reference.generate(input_ids=ids, attention_mask=mask, do_sample=False, guidance_scale=3.0,
                           max_new_tokens=n_frames + K - 1, **features)
    ours.set_generation_params(duration=n_frames / ours.frame_rate, use_sampling=False, cfg_coef=3.0)
    if melody is None:
        ours.generate(DESCRIPTIONS)
    else:
        ours.generate_with_chroma(DESCRIPTIONS, melody, SAMPLE_RATE)
    return hf_codes[0][0], ours_codes[0]


def test_training_loss_with_a_melody_matches_hfs_loss_with_labels(saved, ours):
    """The melody model's objective on a batch (text and chroma prepended) equals HF's loss with `labels`
    (the delayed sequence after the start step, (B, S - 1, K); HF drops the prefix's outputs itself)."""
    reference, folder = saved
    codes = torch.randint(0, CARD, (2, K, 20), generator=torch.Generator().manual_seed(2))  # (B, K, T)
    ids, mask = hf_text(reference, folder, DESCRIPTIONS)
    chroma = ours.lm.chroma(torch.cat([two_notes(), two_notes().flip(-1)]))  # (2, F', 12)
    with torch.no_grad():
        text, text_mask = ours.lm.encode_text(ids, mask.bool())
        loss, _ = ours.lm.compute_loss(codes, text, text_mask, chroma)
        sequence, _ = ours.lm.pattern.build(codes, ours.lm.special)  # (B, K, S)
        expected = reference(input_ids=ids, attention_mask=mask, input_features=chroma,
                             decoder_input_ids=sequence[:, :, :-1].reshape(2 * K, -1),
                             labels=sequence[:, :, 1:].transpose(1, 2)).loss
    assert torch.allclose(loss, expected, rtol=1e-5, atol=0), (float(loss), float(expected))


def test_greedy_guided_generation_with_a_melody_gives_hf_tokens(saved, ours, monkeypatch):
    """35 pattern steps (32 frames + K - 1), guidance 3 with HF's null melody, a melody shorter than
    the window: the same tokens as HF's generate."""
    melody = torch.cat([two_notes(), two_notes().flip(-1)])  # (2, 1, N)
    expected, codes = run_both(saved, ours, monkeypatch, melody)
    assert codes.shape == (2, K, 32) and torch.equal(codes, expected)
    assert len(codes[0].unique()) > 3  # not a degenerate constant sequence
    _, text_only = run_both(saved, ours, monkeypatch, None)
    assert not torch.equal(codes, text_only)  # the melody changed the tokens: the match above is not vacuous


def test_text_only_generation_uses_hfs_null_melody(saved, ours, monkeypatch):
    """No melody: HF prepends its null chroma (one-hot pitch class 0, repeated); ours is the chroma of
    silence, the same thing. Same tokens."""
    expected, codes = run_both(saved, ours, monkeypatch, None)
    assert torch.equal(codes, expected)


def test_a_melody_folder_needs_its_chroma_sizes(saved, tmp_path):
    folder = broken_copy(saved[1], tmp_path, config=lambda c: None)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(PretrainedError, match="preprocessor_config.json: missing"):
        MusicGen.from_pretrained(folder)
    folder = broken_copy(saved[1], tmp_path / "length", config=lambda c: c.update(chroma_length=CHROMA_LENGTH + 1))
    with pytest.raises(PretrainedError, match="chroma_length"):
        MusicGen.from_pretrained(folder)


def test_generate_script_with_a_melody(saved, tmp_path):
    tune, out = tmp_path / "tune.wav", tmp_path / "out.wav"
    write_audio(tune, two_notes()[0], SAMPLE_RATE)
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "generate.py", "--pretrained", str(saved[1]), "--melody", str(tune),
                             "--text", "lo fi beat", "--duration", "0.01", "--out", str(out)],
                            capture_output=True, text=True, cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and "wrote" in result.stdout
