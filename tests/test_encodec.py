"""encodec.py, losses.py: shapes and lengths, SEANet's
padding, the paper config's size, losses, discriminator, training, save/load."""
import math

import pytest
import torch

from dataclasses import replace

import audio
import losses as discriminator
import encodec
import losses
from encodec import EncodecModel, load_codec
from train import TINY_CODEC


def micro_config(**changes):
    """The tiny recipe's codec, shrunk to run in milliseconds (the structure of the real one)."""
    return replace(TINY_CODEC, **dict(dict(ratios=(8, 5, 4, 4), n_filters=4, dimension=8, codebook_size=16, lstm_layers=1,
                                           mel_scales=(64, 128, 256), disc_filters=4, disc_scales=(1024, 512, 256)),
                                      **changes))


@pytest.mark.parametrize("spectral", [True, False])
@pytest.mark.parametrize("n_samples", [1, 639, 641, 3 * 640 + 17])
def test_lengths_for_odd_inputs(n_samples, spectral):
    torch.manual_seed(0)
    codec = EncodecModel(micro_config(spectral=spectral)).eval()
    wav = torch.randn(2, 1, n_samples)
    codes = codec.encode(wav)
    T = math.ceil(n_samples / 640)
    assert codes.shape == (2, 4, T) and codes.dtype == torch.long
    assert codec.decode(codes).shape == (2, 1, T * 640)
    recon, train_codes, commitment = codec.train()(wav)
    assert recon.shape == (2, 1, T * 640) and commitment.ndim == 0


def test_seanet_convs_pad_and_trim_the_larger_half_on_the_left():
    """Known answers for EnCodec's padding (encodec.py), with all-ones kernels and zero padding: a stride-5 conv
    of kernel 10 pads p = 5, 3 left and 2 right, plus 2 that complete the last stride of 23 ones; the
    transposed conv trims its 5 extra samples 3 left, 2 right."""
    cfg = replace(encodec.EncodecConfig(), pad_mode="constant")
    down, up = encodec.PaddedConv1d(cfg, 1, 1, 10, stride=5), encodec.TrimmedConvTranspose1d(1, 1, 5)
    with torch.no_grad():
        for module in (down, up):
            module.conv.parametrizations.weight.original1.fill_(1.0)          # v = ones
            module.conv.parametrizations.weight.original0.fill_(10 ** 0.5)    # g = |v|: weight = ones
            module.conv.bias.zero_()
        out = down(torch.ones(1, 1, 23))                                      # (1, 1, 23) -> (1, 1, 5)
        assert out.flatten().tolist() == [7, 10, 10, 10, 6]                   # windows start 3 samples early
        # Two ones upsampled: overlapping kernels give 1 1 1 1 1 2 2 2 2 2 1 1 1 1 1, trimmed [3:13].
        assert up(torch.ones(1, 1, 2)).flatten().tolist() == [1, 1, 2, 2, 2, 2, 2, 1, 1, 1]


def test_derived_values():
    cfg = micro_config()
    assert cfg.hop_length == 640 and cfg.frame_rate == 25.0
    paper = encodec.EncodecConfig()
    assert paper.hop_length == 640 and paper.frame_rate == 50.0  # 32 kHz / 640 = the paper's 50 Hz


def expected_parameter_count(cfg):
    """Counted independently of the modules: a weight-normed conv has weight v (out·in·k), gain g (out)
    and bias (out); an LSTM layer has 4 gates × (input + hidden + 2 biases) × hidden."""
    conv = lambda c_in, c_out, k: c_out * c_in * k + 2 * c_out
    lstm = lambda d: cfg.lstm_layers * 4 * d * (d + d + 2)
    residual = lambda c: conv(c, c // 2, 3) + conv(c // 2, c, 1)
    total, channels = conv(1, cfg.n_filters, 7), cfg.n_filters
    for ratio in reversed(cfg.ratios):                         # encoder: small strides first
        total += cfg.n_residual_layers * residual(channels) + conv(channels, 2 * channels, 2 * ratio)
        channels *= 2
    total += lstm(channels) + conv(channels, cfg.dimension, 7)
    decoder, channels = conv(cfg.dimension, channels, 7) + lstm(channels), channels
    for ratio in cfg.ratios:
        # a transposed conv's weight is (in, out, k) and its weight-norm gain has one entry per *input* channel
        decoder += channels * (channels // 2) * 2 * ratio + channels + channels // 2
        channels //= 2
        decoder += cfg.n_residual_layers * residual(channels)
    decoder += conv(channels, 1, 7)
    # Snake activations have one α each: per resolution 2 in each residual block + 1, + 1 at the end.
    snakes = 2 * (len(cfg.ratios) * (2 * cfg.n_residual_layers + 1) + 1) if cfg.snake else 0
    return total + decoder + snakes


def test_paper_config_parameter_count():
    cfg = encodec.EncodecConfig()
    model = EncodecModel(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == expected_parameter_count(cfg)
    # ~57M, most of it in the two 1024-wide LSTMs (2 × 16.8M); audiocraft's 32 kHz checkpoint is ~59M.
    assert 50e6 < n_params < 65e6
    assert model.quantizer.bitrate(cfg.frame_rate) == 2200  # 4 × 11 bits × 50 Hz
    seanet = micro_config(spectral=False)
    assert expected_parameter_count(seanet) == sum(p.numel() for p in EncodecModel(seanet).parameters())


def test_losses_are_zero_for_identical_inputs():
    torch.manual_seed(0)
    wav = torch.randn(2, 1, 4000)
    assert losses.MultiScaleMelLoss(16000, (64, 256, 1024))(wav, wav).item() == 0.0
    disc = discriminator.MSSTFTDiscriminator((256, 128), filters=4)
    outputs = disc(wav)
    assert discriminator.feature_matching_loss(outputs, outputs).item() == 0.0
    # Every feature map doubled: |f - 2f| / |f| = 1 on every layer and scale (an |a - b|-only formula gives more).
    doubled = [(logits, [2 * f for f in features]) for logits, features in outputs]
    assert discriminator.feature_matching_loss(outputs, doubled).item() == pytest.approx(1.0, rel=1e-5)
    assert losses.MultiScaleMelLoss(16000, (64, 256))(wav, 0.5 * wav).item() > 0.1


def test_istft_decoder_synthesis_rings_at_the_exact_frequency():
    """Known answer: the magnitudes of a 131 Hz cosine's STFT and the offset δ = 131·n_fft/sr − k in every
    bin must give back the cosine: a peak at 131 Hz (between the 25 Hz bins) and a flat envelope."""
    decoder = encodec.ISTFTDecoder(micro_config(ratios=(8, 5, 4, 2)))  # hop 320: STFT hop 160, n_fft 640
    sr, f, n = 16000, 131.0, 16000
    wav = torch.cos(2 * math.pi * f * torch.arange(n) / sr)
    spec = torch.stft(wav, decoder.n_fft, decoder.hop, window=decoder.window, return_complex=True)[..., :n // decoder.hop]
    delta = f * decoder.n_fft / sr - decoder.bins                          # (n_freqs, 1): exact offsets
    out = decoder.synthesize(spec.abs().log()[None], delta.expand_as(spec.real)[None])[0, 0]
    assert out.shape == (n,)
    middle = out[2000:14000]
    envelope = middle.reshape(-1, 400).abs().max(dim=1).values             # peak per 25 ms
    assert 0.97 < envelope.min() and envelope.max() < 1.03                  # amplitude 1, no beating
    spectrum = torch.fft.rfft(middle * torch.hann_window(12000)).abs()
    assert abs(spectrum.argmax().item() * sr / 12000 - f) < 1.5            # 131 Hz, not a bin centre (125/150)
    # Without the offsets (δ = 0) every bin rings at its own centre: the peak moves off 131 Hz.
    plain = decoder.synthesize(spec.abs().log()[None], torch.zeros_like(spec.real)[None])[0, 0, 2000:14000]
    assert abs(torch.fft.rfft(plain * torch.hann_window(12000)).abs().argmax().item() * sr / 12000 - f) > 5


def test_semitone_loss_hears_a_wrong_note():
    loss = losses.SemitoneLoss(16000)
    bank = audio.semitone_filterbank(2048, 16000)
    assert bank.shape == (61, 1025) and abs(bank[69 - 40].argmax().item() * 16000 / 2048 - 440) < 4  # A4 band
    t = torch.arange(8000) / 16000
    tone = lambda f, gain=0.5: (gain * torch.sin(2 * math.pi * f * t))[None, None]
    c3, c_sharp3 = tone(130.81), tone(138.59)
    assert loss(c3, c3).item() == 0.0
    # One semitone off costs more than being 2 dB too quiet.
    quieter = tone(130.81, 0.5 * 10 ** (-2 / 20))
    assert loss(c3, c_sharp3) > 2 * loss(c3, quieter)


def test_instantaneous_frequency_loss_hears_detuning_not_phase_or_gain():
    loss = losses.InstantaneousFrequencyLoss(640, 160)
    t = torch.arange(8000) / 16000
    tone = lambda f, phase=0.0, gain=0.5: (gain * torch.sin(2 * math.pi * f * t + phase))[None, None]
    e5 = tone(659.26)
    # Not exactly 0: the ε = 1e-7 of the cosine's denominator counts side-lobe bins with |X| ≲ 0.02 as partly wrong.
    assert loss(e5, e5).item() < 0.005
    # The decoder invents its own phase, and loudness is the mel loss's job: neither costs much here.
    shifted = loss(e5, tone(659.26, phase=2.0, gain=0.2)).item()
    assert shifted < 0.005
    # A note 30 cents flat costs, 60 cents flat costs more (and both far more than the phase shift).
    flat30, flat60 = (loss(e5, tone(659.26 * 2 ** (-c / 1200))).item() for c in (30, 60))
    assert 20 * shifted < flat30 < flat60
    # Silence where the input rings: the loss is finite and so is its gradient.
    silence = torch.zeros_like(e5, requires_grad=True)
    value = loss(e5, silence)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(silence.grad).all()


def test_mel_filterbank_shape_and_peaks():
    bank = audio.mel_filterbank(1024, 40, 16000)
    assert bank.shape == (40, 513) and bank.min() >= 0
    assert bank.max(dim=1).values.min() > 0.5           # every band catches at least one FFT bin
    centres = bank.argmax(dim=1)
    assert torch.all(centres[1:] >= centres[:-1])        # bands ordered by frequency


def test_discriminator_output_shapes():
    disc = discriminator.MSSTFTDiscriminator((256, 128), filters=4)
    outputs = disc(torch.randn(3, 1, 4096))
    assert len(outputs) == 2
    for (logits, features), n_fft in zip(outputs, (256, 128)):
        frames, n_freqs = 4096 // (n_fft // 4) + 1, n_fft // 2 + 1
        for _ in range(3):  # three convs stride 2 along frequency
            n_freqs = (n_freqs - 1) // 2 + 1
        assert logits.shape == (3, 1, frames, n_freqs)
        assert len(features) == 5 and features[0].shape == (3, 4, frames, n_fft // 2 + 1)
    # The losses on real outputs equal their formulas written out here (hand-made values: test_known_answers).
    real, fake = disc(torch.randn(3, 1, 4096)), disc(torch.randn(3, 1, 4096))
    hinge = sum(torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for (r, _), (f, _) in zip(real, fake)) / 2
    assert discriminator.discriminator_hinge_loss(real, fake).item() == pytest.approx(hinge.item(), rel=1e-6)
    adversarial = sum(torch.relu(1 - f).mean() for f, _ in fake) / 2
    assert discriminator.generator_adversarial_loss(fake).item() == pytest.approx(adversarial.item(), rel=1e-6)


def test_a_few_training_steps_lower_the_loss():
    torch.manual_seed(0)
    cfg = micro_config(n_filters=8, dimension=16)
    codec = EncodecModel(cfg).train()
    mel = losses.MultiScaleMelLoss(cfg.sample_rate, cfg.mel_scales)
    t = torch.arange(2 * 1280) / cfg.sample_rate
    wav = (0.5 * torch.sin(2 * math.pi * torch.tensor([[220.0], [330.0]]) * t))[:, None]  # (2, 1, 2560)
    optimizer = torch.optim.Adam(codec.parameters(), lr=3e-3, betas=(0.5, 0.9))
    history = []
    for _ in range(30):
        recon, codes, commitment = codec(wav)
        loss = (recon - wav).abs().mean() + mel(wav, recon) + commitment
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.8 * sum(history[:5]) / 5


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    codec = EncodecModel(micro_config()).train()
    codec(torch.randn(2, 1, 1280))  # initialise the codebooks
    path = tmp_path / "codec.pt"
    codec.save(path, step=7, note="hello")
    assert not (tmp_path / "codec.pt.tmp").exists()  # written to a temp file, then renamed
    loaded, ckpt = load_codec(path)
    assert ckpt["step"] == 7 and ckpt["note"] == "hello"
    for (name, a), (_, b) in zip(codec.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    wav = torch.randn(1, 1, 2000)
    codec.eval()
    assert torch.equal(codec.encode(wav), loaded.encode(wav))
    assert torch.equal(codec.decode(codec.encode(wav)), loaded.decode(loaded.encode(wav)))


def test_bad_checkpoints_and_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_codec(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_codec(tmp_path / "junk.pt")
    codec = EncodecModel(micro_config()).eval()
    with pytest.raises(ValueError, match="mono"):
        codec.encode(torch.randn(1, 2, 640))
    with pytest.raises(ValueError, match="codes must lie"):
        codec.decode(torch.full((1, 4, 3), 16))


def test_istft_decoder_frequency_offsets_stay_within_a_bin_and_keep_their_gradient():
    """Pins a fix: δ was bounded only by a clamp at ±2 bins, whose gradient is 0 beyond it, and trained
    decoders parked most loud bins there. Now δ = tanh(raw): within ±1 bin, and always trainable."""
    cfg = micro_config(ratios=(8, 5, 4, 2))
    decoder = encodec.ISTFTDecoder(cfg)
    half = decoder.n_freqs * decoder.per_frame  # the head's outputs: log magnitudes, then the δ
    with torch.no_grad():
        decoder.head.bias[half:] = 5.0  # every raw δ far beyond the bound
    seen, original = {}, decoder.synthesize

    def spy(log_magnitude, delta):  # records the δ that reaches the synthesis
        seen["delta"] = delta
        return original(log_magnitude, delta)
    decoder.synthesize = spy
    wav = decoder(torch.randn(1, cfg.dimension, 6))
    assert seen["delta"].abs().max() < 1.0
    readout = torch.randn(wav.shape, generator=torch.Generator().manual_seed(0))
    (wav * readout).sum().backward()
    assert decoder.head.bias.grad[half:].abs().max() > 0, "no gradient reaches δ beyond the bound"


@pytest.mark.parametrize("spectral", [True, False])
def test_lookahead_frames_is_exactly_what_a_cut_changes(spectral):
    """Encoding audio cut after 20 frames must leave frames 0 .. 20 - lookahead - 1 as they were in the
    uncut encoding (their receptive field ends before the cut) and change frame 20 - lookahead (its
    field reaches past the cut, into the zero padding). Fails if the look-ahead is over- or under-counted."""
    torch.manual_seed(0)
    codec = EncodecModel(micro_config(spectral=spectral)).eval()
    lookahead = codec.lookahead_frames
    assert 1 <= lookahead < 20
    wav = torch.randn(1, 1, 32 * codec.hop_length)
    with torch.no_grad():
        whole = codec.encoder(wav)[..., :20]                    # (1, D, 32) -> (1, D, 20)
        cut = codec.encoder(wav[..., :20 * codec.hop_length])   # (1, D, 20)
    kept = 20 - lookahead
    assert torch.allclose(cut[..., :kept], whole[..., :kept], atol=1e-6)  # in practice bit-identical
    assert (cut[..., kept] - whole[..., kept]).abs().max() > 1e-5  # the edge of the field: small, not zero
