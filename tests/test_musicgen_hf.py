"""MusicGen.from_pretrained (pretrained.py) against HF transformers' MusicgenForConditionalGeneration.

The reference is a tiny random HF MusicGen saved with `save_pretrained` (the layout of the published
facebook/musicgen-* folders): text width 32 != decoder width 16, so enc_to_dec_proj exists; K = 4
codebooks of 32 entries, filled with random vectors (HF starts them at zero, which would make every code
0); a T5-style tokenizer.json written by `tokenizers`. Our code reads the folder into our own modules
and must give HF's text states, codes, audio, logits and greedy tokens. Nothing is downloaded.
"""
import json
import math
import shutil

import pytest
import torch

import generate
from musicgen import MusicGen
from published.pretrained import PretrainedError, read_state_dict
from test_t5 import save_tokenizer
from transformer import sinusoidal_positions

transformers = pytest.importorskip("transformers")

DESCRIPTIONS = ["a happy rock song with guitars", "lo fi beat"]  # different lengths: the second is padded
K, CARD = 4, 32


def tiny_reference(channels=1):
    """A random HF MusicGen in the published layout, scaled down (see the module docstring); channels=2:
    a stereo one (the decoder reads 2·K codebooks, left and right of each level; the codec stays mono)."""
    torch.manual_seed(0)
    text = transformers.T5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=128, num_layers=2, num_heads=4)
    ratios, sample_rate = [2, 2], 8000  # hop 4: 2000 frames per second
    bandwidth = K * math.log2(CARD) * math.ceil(sample_rate / math.prod(ratios)) / 1000  # HF derives K from it
    audio = transformers.EncodecConfig(sampling_rate=sample_rate, target_bandwidths=[bandwidth], hidden_size=16,
                                       num_filters=4, upsampling_ratios=ratios, codebook_size=CARD, num_lstm_layers=2,
                                       use_causal_conv=False, use_conv_shortcut=False, normalize=False)
    decoder = transformers.MusicgenDecoderConfig(vocab_size=CARD, num_codebooks=K * channels, hidden_size=16,
                                                 num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
                                                 max_position_embeddings=64, pad_token_id=CARD, bos_token_id=CARD,
                                                 audio_channels=channels)
    config = transformers.MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
    model = randomize(transformers.MusicgenForConditionalGeneration(config).eval())
    assert model.audio_encoder.quantizer.num_quantizers == K and hasattr(model, "enc_to_dec_proj")
    return model


@torch.no_grad()
def randomize(model):
    """Random codebooks (HF starts them at zero: every code would be 0) and LayerNorms (HF starts them
    at (1, 0): random, so a dropped bias shows). Returns the model."""
    for layer in model.audio_encoder.quantizer.layers:
        layer.codebook.embed.normal_()
        layer.codebook.embed_avg.normal_()
        layer.codebook.cluster_size.uniform_(0, 10)
    for norm in [m for m in model.decoder.modules() if isinstance(m, torch.nn.LayerNorm)]:
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0, 0.3)
    return model


def save(reference, tmp_path_factory, name):
    """save_pretrained + a T5-layout tokenizer.json → the folder."""
    folder = tmp_path_factory.mktemp(name) / "tiny"
    reference.save_pretrained(folder)
    save_tokenizer(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    reference = tiny_reference()
    return reference, save(reference, tmp_path_factory, "musicgen")


@pytest.fixture(scope="module")
def ours(saved):
    return MusicGen.from_pretrained(saved[1])


def hf_text(reference, folder, texts):
    """HF's tokenizer on the folder's tokenizer.json → ids, mask (B, L)."""
    batch = transformers.T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))(texts, padding=True,
                                                                                          return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_text_states_match_hf(saved, ours):
    reference, folder = saved
    ids, mask = ours.tokenizer.encode(DESCRIPTIONS)
    hf_ids, hf_mask = hf_text(reference, folder, DESCRIPTIONS)
    assert torch.equal(ids, hf_ids) and torch.equal(mask, hf_mask.bool()) and not mask.all()
    with torch.no_grad():
        expected = reference.text_encoder(input_ids=hf_ids, attention_mask=hf_mask).last_hidden_state
        torch.testing.assert_close(ours.lm.text_encoder.t5(ids, mask), expected, atol=1e-5, rtol=0)
        # What the decoder cross-attends to: projected to its width, padded positions zeroed.
        text, text_mask = ours.lm.encode_text(ids, mask)
        torch.testing.assert_close(text, reference.enc_to_dec_proj(expected) * hf_mask[..., None], atol=1e-5, rtol=0)
    assert text.shape == (2, ids.shape[1], 16) and not any(p.requires_grad for p in ours.lm.text_encoder.t5.parameters())


def test_codec_codes_are_exact_and_audio_matches_hf(saved, ours):
    reference, _ = saved
    wav = torch.randn(2, 1, 403, generator=torch.Generator().manual_seed(0)) * 0.3  # not a whole number of frames
    with torch.no_grad():
        encoded = reference.audio_encoder.encode(wav)
        expected_audio = reference.audio_encoder.decode(encoded.audio_codes, encoded.audio_scales).audio_values
    codes = ours.codec.encode(wav)
    assert torch.equal(codes, encoded.audio_codes[0]) and len(codes.unique()) > 5
    torch.testing.assert_close(ours.codec.decode(codes), expected_audio, atol=1e-4, rtol=0)


def test_positions_are_hfs_to_the_last_bit():
    table = transformers.models.musicgen.modeling_musicgen.MusicgenSinusoidalPositionalEmbedding.get_embedding(3000, 1024)
    assert torch.equal(sinusoidal_positions(torch.arange(3000), 1024), table)


def test_decoder_logits_match_hf(saved, ours):
    """The same tokens (special ones included) and text through both decoders: the same logits."""
    reference, folder = saved
    sequence = torch.randint(0, CARD + 1, (2, K, 21), generator=torch.Generator().manual_seed(1))  # (B, K, S)
    ids, mask = hf_text(reference, folder, DESCRIPTIONS)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=sequence.reshape(2 * K, -1)).logits
        text, text_mask = ours.lm.encode_text(ids, mask.bool())
        logits = ours.lm(sequence, ours.lm.conditions(text, text_mask))  # (B, K, S, card)
    torch.testing.assert_close(logits, expected.view(2, K, 21, CARD), atol=1e-4, rtol=0)


def test_training_loss_matches_hfs_loss_with_labels(saved, ours):
    """Our objective on a batch (the paper's plain mean over the real tokens, per codebook, then over the
    K codebooks) equals HF's loss with `labels` for the same weights and codes. HF's labels are the
    delayed sequence after the start step, (B, S - 1, K), its special cells (pad) ignored; its decoder
    reads the sequence's steps 0 .. S - 2 (what HF's own shift of the labels would give)."""
    reference, folder = saved
    lm = ours.lm
    assert lm.cfg.start_weight == 1.0  # a published model: the paper's loss
    codes = torch.randint(0, CARD, (2, K, 20), generator=torch.Generator().manual_seed(2))  # (B, K, T)
    ids, mask = ours.tokenizer.encode(DESCRIPTIONS)
    with torch.no_grad():
        text, text_mask = lm.encode_text(ids, mask)
        loss, per_codebook = lm.compute_loss(codes, text, text_mask, None)
        sequence, _ = lm.pattern.build(codes, lm.special)  # (B, K, S), special = CARD = HF's pad
        hf_ids, hf_mask = hf_text(reference, folder, DESCRIPTIONS)
        inputs = sequence[:, :, :-1].reshape(2 * K, -1)  # what HF's shift of the labels gives: start step first
        expected = reference(input_ids=hf_ids, attention_mask=hf_mask, decoder_input_ids=inputs,
                             labels=sequence[:, :, 1:].transpose(1, 2)).loss
    assert torch.allclose(loss, expected, rtol=1e-5, atol=0), (float(loss), float(expected))
    assert torch.allclose(per_codebook.mean(), expected, rtol=1e-5, atol=0)


def test_greedy_guided_generation_gives_hf_tokens(saved, ours, monkeypatch):
    """Two descriptions of different lengths, guidance 3, greedy, 35 pattern steps (32 frames and the
    delay pattern's K - 1 extra steps): the same tokens as HF's generate, and the same audio."""
    reference, folder = saved
    n_frames = 32
    hf_codes = []
    hf_decode = reference.audio_encoder.decode
    monkeypatch.setattr(reference.audio_encoder, "decode",
                        lambda codes, *a, **kw: hf_codes.append(codes) or hf_decode(codes, *a, **kw))
    ids, mask = hf_text(reference, folder, DESCRIPTIONS)
    with torch.no_grad():
        expected_audio = reference.generate(input_ids=ids, attention_mask=mask, do_sample=False, guidance_scale=3.0,
                                            max_new_tokens=n_frames + K - 1)
    ours.set_generation_params(duration=n_frames / ours.frame_rate, use_sampling=False, cfg_coef=3.0)
    ours_codes = []
    our_decode = ours.codec.decode
    monkeypatch.setattr(ours.codec, "decode", lambda codes: ours_codes.append(codes) or our_decode(codes))
    audio = ours.generate(DESCRIPTIONS)
    assert ours_codes[0].shape == (2, K, n_frames)
    assert torch.equal(ours_codes[0], hf_codes[0][0])
    assert len(ours_codes[0][0].unique()) > 3  # not a degenerate constant sequence
    torch.testing.assert_close(audio, expected_audio, atol=1e-4, rtol=0)


def test_a_stereo_model_loads_and_generates_hfs_tokens_and_audio(tmp_path_factory, monkeypatch):
    """A stereo MusicGen (musicgen-stereo-*): 2·K codebooks, left and right of level k delayed alike by k,
    each channel decoded by the mono codec. Greedy, guidance 3: HF's tokens for each channel and its
    stereo audio (B, 2, N)."""
    reference = tiny_reference(channels=2)
    folder = save(reference, tmp_path_factory, "stereo")
    ours = MusicGen.from_pretrained(folder)
    assert ours.lm.cfg.n_q == 2 * K and ours.lm.cfg.audio_channels == 2 and ours.codec.n_q == K
    n_frames = 24
    hf_codes, ours_codes = [], []
    hf_decode, our_decode = reference.audio_encoder.decode, ours.codec.decode
    monkeypatch.setattr(reference.audio_encoder, "decode",
                        lambda codes, *a, **kw: hf_codes.append(codes) or hf_decode(codes, *a, **kw))
    monkeypatch.setattr(ours.codec, "decode", lambda codes: ours_codes.append(codes) or our_decode(codes))
    ids, mask = hf_text(reference, folder, DESCRIPTIONS)
    with torch.no_grad():
        expected_audio = reference.generate(input_ids=ids, attention_mask=mask, do_sample=False, guidance_scale=3.0,
                                            max_new_tokens=n_frames + K - 1)
    ours.set_generation_params(duration=n_frames / ours.frame_rate, use_sampling=False, cfg_coef=3.0)
    audio = ours.generate(DESCRIPTIONS)
    assert len(ours_codes) == len(hf_codes) == 2  # left, then right
    for got, expected in zip(ours_codes, hf_codes):
        assert got.shape == (2, K, n_frames) and torch.equal(got, expected[0])
    assert not torch.equal(ours_codes[0], ours_codes[1])  # two channels, not one copied
    assert audio.shape == expected_audio.shape == (2, 2, n_frames * ours.codec.hop_length)
    torch.testing.assert_close(audio, expected_audio, atol=1e-4, rtol=0)


def test_a_stereo_continuation_keeps_each_channels_prompt(tmp_path_factory, monkeypatch):
    """A stereo prompt: each channel is encoded by the mono codec and kept, level by level, at the start
    of that channel's codes (left: rows 0, 2, ..; right: rows 1, 3, ..)."""
    reference = tiny_reference(channels=2)
    ours = MusicGen.from_pretrained(save(reference, tmp_path_factory, "stereo_prompt"))
    prompt = torch.randn(1, 2, 40, generator=torch.Generator().manual_seed(3)) * 0.3  # (B, 2, N): 10 frames
    decoded, our_decode = [], ours.codec.decode
    monkeypatch.setattr(ours.codec, "decode", lambda codes: decoded.append(codes) or our_decode(codes))
    ours.set_generation_params(duration=16 / ours.frame_rate, use_sampling=False, cfg_coef=3.0)
    audio = ours.generate_continuation(prompt, ours.sample_rate, ["lo fi beat"])
    assert audio.shape[:2] == (1, 2) and len(decoded) == 2
    for channel, codes in enumerate(decoded):
        expected = ours.codec.encode(prompt[:, channel:channel + 1])  # (1, K, 10)
        assert torch.equal(codes[..., :expected.shape[-1]], expected)


def test_empty_description_is_hf_unconditional_generation(saved, ours):
    """"" is the null condition (as the reference library): without guidance, our generation from ""
    equals HF's from its unconditional inputs (zero text states, all-masked)."""
    reference, _ = saved
    n_frames = 12
    with torch.no_grad():
        hf_codes = []
        hf_decode = reference.audio_encoder.decode
        reference.audio_encoder.decode = lambda codes, *a, **kw: hf_codes.append(codes) or hf_decode(codes, *a, **kw)
        try:
            reference.generate(**reference.get_unconditional_inputs(1), do_sample=False, max_new_tokens=n_frames + K - 1)
        finally:
            del reference.audio_encoder.decode
    ours.set_generation_params(duration=n_frames / ours.frame_rate, use_sampling=False, cfg_coef=None)
    ids, mask = ours.tokenizer.encode([""])
    assert mask.tolist() == [[True]]  # T5's tokenizer gives "" one token (</s>); MusicGen masks it
    ours_codes = []
    our_decode = ours.codec.decode
    ours.codec.decode = lambda codes: ours_codes.append(codes) or our_decode(codes)
    try:
        ours.generate_unconditional(1)
    finally:
        del ours.codec.decode
    assert torch.equal(ours_codes[0], hf_codes[0][0])


def test_no_melody_input_and_a_bfloat16_lm(saved, ours):
    """The published text-to-music models have no melody input: asking for one is an error, not a
    silently ignored melody. dtype=bfloat16 halves the LM's memory and still generates."""
    with pytest.raises(ValueError, match="no melody input"):
        ours.generate_with_chroma(["a happy rock song"], torch.zeros(1, 1, 800), ours.sample_rate)
    half = MusicGen.from_pretrained(saved[1], dtype=torch.bfloat16)
    assert next(half.lm.transformer.parameters()).dtype == torch.bfloat16
    half.set_generation_params(duration=8 / half.frame_rate)
    torch.manual_seed(0)
    audio = half.generate(DESCRIPTIONS)
    assert audio.shape == (2, 1, 8 * half.codec.hop_length) and torch.isfinite(audio).all()


def legacy_weight_norm(folder, out):
    """A copy of `folder` as the published 2023 files are: the codec's weight norm as weight_v (the conv
    weight) and weight_g (its norm over all dims but 0) instead of parametrizations.*, and the decoder's
    sinusoidal position table stored as a (frozen) parameter."""
    save_file = pytest.importorskip("safetensors.torch").save_file
    sd = read_state_dict(folder)
    legacy = {"decoder.model.decoder.embed_positions.weights": sinusoidal_positions(torch.arange(64), 16)}
    for name, value in sd.items():
        if name.endswith(".parametrizations.weight.original1"):
            base = name[:-len(".parametrizations.weight.original1")]
            g, v = sd[base + ".parametrizations.weight.original0"], value
            weight = g * v / torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True)
            legacy[base + ".weight_v"] = weight.contiguous()
            legacy[base + ".weight_g"] = torch.linalg.vector_norm(weight, dim=tuple(range(1, v.ndim)), keepdim=True)
        elif not name.endswith(".parametrizations.weight.original0"):
            legacy[name] = value
    out.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(folder / name, out / name)
    save_file(legacy, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_the_published_2023_layout_loads_too(saved, ours, tmp_path):
    """Both weight-norm spellings give the same codec; a stored position table is ignored (as HF does)."""
    reference, folder = saved
    assert any(".parametrizations.weight.original0" in name for name in read_state_dict(folder))
    old = MusicGen.from_pretrained(legacy_weight_norm(folder, tmp_path / "legacy"))
    assert all(torch.equal(a, b) for a, b in zip(old.lm.state_dict().values(), ours.lm.state_dict().values()))
    wav = torch.randn(1, 1, 256, generator=torch.Generator().manual_seed(2)) * 0.3
    assert torch.equal(old.codec.encode(wav), ours.codec.encode(wav))
    torch.testing.assert_close(old.codec.decode(ours.codec.encode(wav)), ours.codec.decode(ours.codec.encode(wav)),
                               atol=1e-5, rtol=0)


def broken_copy(folder, tmp_path, config=None, drop=None):
    """A copy of the tiny folder with config.json changed by `config(dict)` or weight `drop` removed."""
    out = tmp_path / "broken"
    shutil.copytree(folder, out)
    if config is not None:
        spec = json.loads((out / "config.json").read_text())
        config(spec)
        (out / "config.json").write_text(json.dumps(spec))
    if drop is not None:
        sd = read_state_dict(out)
        del sd[drop]
        pytest.importorskip("safetensors.torch").save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(model_type="musicgen_stereo"), "model_type 'musicgen_stereo' is not supported"),
    (lambda c: c["decoder"].update(audio_channels=3), "audio_channels must be 1 or 2"),
    (lambda c: c["decoder"].update(audio_channels=2), r"4 codebooks of 32 \(2 channel\(s\)\), the decoder reads 4"),
    (lambda c: c["decoder"].update(activation_function="relu"), "activation 'relu' is not supported"),
    (lambda c: c["decoder"].pop("ffn_dim"), "decoder needs positive integers ffn_dim"),
    (lambda c: c["decoder"].update(num_codebooks=3), r"the codec has 4 codebooks of 32 \(1 channel\(s\)\), the decoder reads 3"),
    (lambda c: c["text_encoder"].update(feed_forward_proj="gated-gelu"), "is not T5's standard layout"),
    (lambda c: c["audio_encoder"].update(use_causal_conv=True), "use_causal_conv=True is not supported"),
    (lambda c: c.pop("decoder"), "needs the sub-configs"),
], ids=["other-model", "channels", "stereo-codebooks", "activation", "missing-field", "codebooks", "t5-layout", "causal-codec", "no-decoder"])
def test_unsupported_configs_are_refused_in_one_line(saved, tmp_path, change, message):
    with pytest.raises(PretrainedError, match=message) as error:
        MusicGen.from_pretrained(broken_copy(saved[1], tmp_path, config=change))
    assert "\n" not in str(error.value)


def test_broken_folders_are_refused_in_one_line(saved, tmp_path):
    folder = saved[1]
    cases = [(tmp_path / "nowhere", "not a folder")]
    no_tokenizer = shutil.copytree(folder, tmp_path / "no_tokenizer")
    (no_tokenizer / "tokenizer.json").unlink()
    cases.append((no_tokenizer, r"tokenizer\.json: cannot read T5's tokenizer"))
    truncated = shutil.copytree(folder, tmp_path / "truncated")
    raw = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(raw[:len(raw) // 2])
    cases.append((truncated, r"model\.safetensors: tensor '.*': truncated or corrupt"))
    cases.append((broken_copy(folder, tmp_path, drop="decoder.model.decoder.layers.1.fc2.weight"),
                  r"does not fit our MusicGen .*missing weight for our transformer\.blocks\.1\.ffn\.2\.weight"))
    for path, message in cases:
        with pytest.raises(PretrainedError, match=message) as error:
            MusicGen.from_pretrained(path)
        assert "\n" not in str(error.value)


def test_generate_cli_with_a_pretrained_folder(saved, tmp_path, capsys):
    folder = saved[1]
    out = tmp_path / "x.wav"
    generate.main(["--pretrained", str(folder), "--text", "a happy rock song", "--duration", "0.01", "--out", str(out)])
    assert out.is_file() and "wrote" in capsys.readouterr().out
    for argv, message in [(["--pretrained", str(tmp_path / "nowhere")], "not a folder"),
                          (["--pretrained", str(folder), "--melody", str(out)], "no melody input")]:
        with pytest.raises(SystemExit) as exit_:
            generate.main(argv + ["--out", str(tmp_path / "y.wav")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        generate.main(["--pretrained", str(folder), "--run", "runs/tiny"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "y.wav").exists()
