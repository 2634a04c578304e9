"""pretrained.encodec_from_hf against HF transformers' EncodecModel, on tiny random models.

The reference is a test-only dependency (requirements-dev.txt); without it these tests skip. Nothing is
downloaded: each reference is built here with random weights, its codebooks filled with random vectors
(HF starts them at zero, which would make every code 0).
"""
import functools
import math

import pytest
import torch

from encodec import EncodecConfig, EncodecModel
from published.pretrained import HF_DEFAULTS, encodec_config_from_hf, encodec_from_hf

transformers = pytest.importorskip("transformers")

# config.json["audio_encoder"] of facebook/musicgen-small (the fields of HF's EncodecConfig).
MUSICGEN_SMALL = dict(
    model_type="encodec", audio_channels=1, chunk_length_s=None, codebook_dim=128, codebook_size=2048, compress=2,
    dilation_growth_rate=2, hidden_size=128, kernel_size=7, last_kernel_size=7, norm_type="weight_norm",
    normalize=False, num_filters=64, num_lstm_layers=2, num_residual_layers=1, overlap=None, pad_mode="reflect",
    residual_kernel_size=3, sampling_rate=32000, target_bandwidths=[2.2], trim_right_ratio=1.0,
    upsampling_ratios=[8, 5, 4, 4], use_causal_conv=False, use_conv_shortcut=False)


@pytest.fixture(autouse=True)
def one_thread():
    """The models are tiny: a second thread would only wait for the first (on a busy machine, for long)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hf_codec(**overrides):
    """A tiny random HF EnCodec in MusicGen's layout (non-causal, reflect padding, 32 kHz), 4 codebooks.
    Built once per set of overrides; callers must not change it."""
    return _hf_codec(tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items())))


@functools.lru_cache(maxsize=None)
def _hf_codec(overrides):
    config = {**MUSICGEN_SMALL, **dict(num_filters=2, hidden_size=16, codebook_dim=None, codebook_size=32), **dict(overrides)}
    hop = math.prod(config["upsampling_ratios"])
    # HF derives the codebook count from the highest bitrate: 4 codebooks × 5 bits × frame rate.
    config["target_bandwidths"] = [4 * 5 * math.ceil(config["sampling_rate"] / hop) / 1000]
    for key in ("model_type", "codebook_dim"):
        config.pop(key)
    torch.manual_seed(0)
    reference = transformers.EncodecModel(transformers.EncodecConfig(**config)).eval()
    with torch.no_grad():
        for layer in reference.quantizer.layers:
            layer.codebook.embed.normal_()
            layer.codebook.embed_avg.normal_()
            layer.codebook.cluster_size.uniform_(0, 10)
    assert reference.quantizer.num_quantizers == 4
    return reference


def hf_reconstruction(reference, wav):
    """HF's encode then decode: codes (B, K, T) and audio (B, 1, T·hop)."""
    with torch.no_grad():
        encoded = reference.encode(wav)
        audio = reference.decode(encoded.audio_codes, encoded.audio_scales).audio_values
    return encoded.audio_codes[0], audio


def legacy_state_dict(reference):
    """The reference's weights as the published 2023 files store them: weight norm as weight_v = the
    conv's weight and weight_g = its norm over all dims but 0 (torch.nn.utils.weight_norm's layout)."""
    state = {k: v for k, v in reference.state_dict().items() if ".parametrizations.weight." not in k}
    for name, module in reference.named_modules():
        if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
            weight = module.weight.detach()
            state[f"{name}.weight_v"] = weight.clone()
            state[f"{name}.weight_g"] = torch.linalg.vector_norm(weight, dim=tuple(range(1, weight.ndim)), keepdim=True)
    return state


@pytest.mark.parametrize("overrides", [
    {},                                                       # MusicGen's codec: strides 4, 4, 5, 8
    {"upsampling_ratios": [4, 4], "use_conv_shortcut": True, "num_residual_layers": 2, "dilation_growth_rate": 3},
    {"upsampling_ratios": [5, 3], "pad_mode": "constant", "num_filters": 4, "compress": 4, "kernel_size": 5,
     "last_kernel_size": 3, "residual_kernel_size": 5},
], ids=["musicgen", "conv-shortcut", "zero-padding"])
def test_codes_and_audio_match_hf_for_any_length(overrides):
    reference = hf_codec(**overrides)
    ours = encodec_from_hf(reference.config.to_dict(), reference.state_dict())
    assert not ours.training and ours.n_q == 4 and ours.codebook_size == 32
    hop = ours.hop_length
    # 1 sample and 100 are shorter than one frame (and than the receptive field); others end mid-frame.
    for n_samples in (1, 100, hop + 1, 3 * hop + 17):
        wav = torch.randn(2, 1, n_samples, generator=torch.Generator().manual_seed(n_samples))
        codes_hf, audio_hf = hf_reconstruction(reference, wav)
        codes = ours.encode(wav)
        assert codes.shape == (2, 4, math.ceil(n_samples / hop))
        assert torch.equal(codes, codes_hf), n_samples
        audio = ours.decode(codes)
        assert audio.shape == audio_hf.shape == (2, 1, codes.shape[-1] * hop)
        torch.testing.assert_close(audio, audio_hf, atol=1e-4, rtol=0)
    # The codebooks' training statistics come along (embed_avg is our EMA sum).
    assert torch.equal(ours.quantizer.layers[1].embed_sum, reference.quantizer.layers[1].codebook.embed_avg)
    assert torch.equal(ours.quantizer.layers[1].cluster_size, reference.quantizer.layers[1].codebook.cluster_size)
    assert bool(ours.quantizer.layers[1].initialized)


def test_the_published_weight_norm_spelling_loads_too():
    reference = hf_codec()
    state = legacy_state_dict(reference)
    assert "encoder.layers.0.conv.weight_g" in state and not any("parametrizations" in k for k in state)
    ours = encodec_from_hf(reference.config.to_dict(), state)
    wav = torch.randn(1, 1, 2000, generator=torch.Generator().manual_seed(0))
    codes_hf, audio_hf = hf_reconstruction(reference, wav)
    assert torch.equal(ours.encode(wav), codes_hf)
    torch.testing.assert_close(ours.decode(codes_hf), audio_hf, atol=1e-4, rtol=0)


def test_our_defaults_are_musicgens_codec_and_hf_defaults_are_transcribed():
    assert encodec_config_from_hf(MUSICGEN_SMALL) == EncodecConfig()
    hf_config = transformers.EncodecConfig(**{k: v for k, v in MUSICGEN_SMALL.items() if k != "model_type"})
    assert hf_config.num_quantizers == EncodecConfig().n_q and hf_config.frame_rate == EncodecConfig().frame_rate
    defaults = transformers.EncodecConfig()  # what a field missing from a config.json means
    assert HF_DEFAULTS["codebook_dim"] is None and defaults.codebook_dim == defaults.hidden_size  # None: D
    for field, value in HF_DEFAULTS.items():
        expected = getattr(defaults, field) if field != "codebook_dim" else None
        assert (list(value) if isinstance(value, tuple) else value) == \
            (list(expected) if isinstance(expected, tuple) else expected), field


@pytest.mark.parametrize("field, value", [
    ("use_causal_conv", True), ("norm_type", "time_group_norm"), ("chunk_length_s", 1.0), ("normalize", True),
    ("audio_channels", 2), ("codebook_dim", 64), ("model_type", "mimi"),
])
def test_unsupported_configs_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        encodec_config_from_hf(dict(MUSICGEN_SMALL, **{field: value}))


def test_a_missing_config_field_means_hfs_default():
    config = dict(MUSICGEN_SMALL)
    del config["use_causal_conv"]  # HF's default is causal, which we do not implement
    with pytest.raises(ValueError, match="use_causal_conv"):
        encodec_config_from_hf(config)
    del config["use_conv_shortcut"], config["pad_mode"]
    config["use_causal_conv"] = False
    cfg = encodec_config_from_hf(config)
    assert cfg.use_conv_shortcut and cfg.pad_mode == "reflect"


def test_missing_unknown_and_misshaped_keys_name_the_key():
    reference = hf_codec()
    config, state = reference.config.to_dict(), reference.state_dict()
    missing = dict(state)
    del missing["decoder.layers.1.lstm.weight_hh_l1"]
    with pytest.raises(ValueError, match=r"missing 'decoder\.layers\.1\.lstm\.weight_hh_l1'"):
        encodec_from_hf(config, missing)
    with pytest.raises(ValueError, match=r"missing 'quantizer\.layers\.3\.codebook\.embed'"):
        encodec_from_hf(config, {k: v for k, v in state.items() if k != "quantizer.layers.3.codebook.embed"})
    with pytest.raises(ValueError, match=r"unexpected key 'audio_encoder\.encoder\.layers\.0\.conv\.bias'"):
        encodec_from_hf(config, {"audio_encoder." + k: v for k, v in state.items()})
    both = dict(state, **{"encoder.layers.0.conv.weight_g": state["encoder.layers.0.conv.parametrizations.weight.original0"]})
    with pytest.raises(ValueError, match=r"both spellings of 'encoder\.layers\.0\.conv\.parametrizations"):
        encodec_from_hf(config, both)
    with pytest.raises(ValueError, match=r"'encoder\.layers\.0\.conv\.bias' has shape \(2,\), the config gives \(4,\)"):
        encodec_from_hf(dict(config, num_filters=4), state)
