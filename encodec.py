"""EnCodec from scratch: the SEANet convolutional codec around residual vector quantization (§2.1).

MusicGen never sees raw audio: it models the discrete codes of an EnCodec model trained beforehand
and then frozen (paper §2.1, "Audio tokenization"). EnCodec (Défossez et al., 2022) is an
autoencoder with a quantizer in the middle:

    wav (B, 1, N) ──SEANet encoder (strided convs, ×hop fewer steps, + LSTM)──▶ z (B, D, T)
    z ──RVQ (rvq.py)──▶ codes (B, K, T)  and  ẑ (B, D, T) ──decoder (transposed convs)──▶ ŵav (B, 1, T·hop)

with T = ceil(N / hop) and hop = prod(ratios): 640 at 32 kHz, i.e. 50 frames per second, and
4 codebooks × 2048 entries = 4 · 11 bits · 50 Hz = 2.2 kbps. `EncodecConfig()` is that codec. Its
training losses live in losses.py (L1, multi-scale mel) and discriminator.py (MS-STFT adversary);
the encoder and decoder in seanet.py. They are laid out and padded as HF transformers' EncodecModel, so
`EncodecModel.from_hf(config, state_dict)` loads the published MusicGen codec and computes its codes.

The tiny recipe swaps the two ends for an STFT encoder and an inverse-STFT decoder (spectral_codec.py,
`EncodecConfig.spectral`); the RVQ, the frame rate and everything downstream stay the same.

Shape letters (DESIGN.md): B batch, C channels, N samples, K codebooks, T frames, D latent dimension.
Data flow: data.py clips → train.py stage 1 trains this model → train.py stage 2 encodes the dataset
once into codes for the LM → musicgen.py decodes generated codes back to audio.
"""
import functools
import math
import os
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from rvq import ResidualVectorQuantizer
# SEANet (the paper's encoder and decoder) and its blocks; activation and LSTMSkip are also the spectral codec's.
from seanet import LSTMSkip, SEANetDecoder, SEANetEncoder, activation, conv1d


@dataclass
class EncodecConfig:
    """The 32 kHz EnCodec of MusicGen. Every default is the paper's (EnCodec's where MusicGen is
    silent); train.TINY_CODEC lists what the tiny recipe changes and why."""
    sample_rate: int = 32000
    n_filters: int = 64                # channels of the first conv, doubled at every downsampling
    ratios: tuple = (8, 5, 4, 4)       # decoder upsampling ratios, reversed in the encoder: hop 640
    dimension: int = 128               # latent dimension D
    n_residual_layers: int = 1         # residual blocks per resolution
    lstm_layers: int = 2               # LSTM after the encoder and before the decoder
    # SEANet's layout (seanet.py), under the names of HF's EncodecConfig:
    kernel_size: int = 7               # first conv of the encoder and of the decoder
    last_kernel_size: int = 7          # last conv of the encoder and of the decoder
    residual_kernel_size: int = 3      # first conv of a residual block
    dilation_growth_rate: int = 2      # residual block j of a resolution dilates by rate^j
    compress: int = 2                  # residual bottleneck: dim -> dim // compress -> dim
    use_conv_shortcut: bool = False    # 1x1 conv instead of the identity on a residual skip (EnCodec: true_skip)
    pad_mode: str = "reflect"          # what SEANet's convs pad with: "reflect", "replicate" or "constant" (zeros)
    snake: bool = False                # Snake activations instead of ELU (ours; see Snake)
    spectral: bool = False             # STFT encoder + inverse-STFT decoder (ours; spectral_codec.py)
    n_q: int = 4                       # codebooks K
    codebook_size: int = 2048          # entries per codebook
    ema_decay: float = 0.99            # codebook EMA (rvq.py)
    # Dead-code threshold in EMA assignments per batch: a code used less is re-drawn (rvq.py).
    dead_threshold: float = 2.0
    # P(a batch uses only the first k ~ U{1..K} codebooks): one model for several bitrates.
    quantizer_dropout: float = 0.0
    # Loss weights (losses.ReconstructionLoss; EnCodec balances the gradients instead, see there).
    l1_weight: float = 0.1             # waveform L1
    mel_weight: float = 2.0            # multi-scale mel
    pitch_weight: float = 0.0          # semitone spectrogram (ours; losses.SemitoneLoss)
    frequency_weight: float = 0.0      # instantaneous frequency (ours; losses.InstantaneousFrequencyLoss)
    commitment_weight: float = 1.0     # RVQ commitment
    mel_scales: tuple = (32, 64, 128, 256, 512, 1024, 2048)  # FFT sizes of the multi-scale mel loss
    adversarial: bool = True           # MS-STFT discriminator on/off (discriminator.py)
    adversarial_weight: float = 4.0
    feature_weight: float = 4.0        # feature matching
    disc_filters: int = 32
    disc_scales: tuple = (2048, 1024, 512, 256, 128)  # STFT sizes of the discriminator

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    # The spectral codec's STFT grid (spectral_codec.py; also the instantaneous-frequency loss's).
    @property
    def stft_frames_per_latent(self) -> int:
        """STFT frames per latent frame (stacked by the encoder, unstacked by the decoder)."""
        return 2

    @property
    def stft_hop(self) -> int:
        return self.hop_length // self.stft_frames_per_latent

    @property
    def stft_n_fft(self) -> int:
        """A Hann window of 4 hops (75% overlap, so overlap-add reconstructs exactly)."""
        return 4 * self.stft_hop

    @classmethod
    def from_hf(cls, config: dict) -> "EncodecConfig":
        """From HF's EncodecConfig as a dict (config.json["audio_encoder"] of a MusicGen folder). A field
        it lacks means HF's default (HF_DEFAULTS); a value we cannot reproduce raises ValueError naming it.
        n_q is every codebook the model has (HF's encode defaults to its lowest target bandwidth; the
        MusicGen codecs list only one)."""
        c = {**HF_DEFAULTS, **config}
        for field, allowed in {**HF_SUPPORTED, "codebook_dim": (None, c["hidden_size"])}.items():
            if c[field] not in allowed:
                raise ValueError(f"EnCodec config: {field}={c[field]!r} is not supported "
                                 f"(only {' or '.join(map(repr, allowed))})")
        ratios = tuple(c["upsampling_ratios"])
        # HF derives the number of codebooks from the highest bitrate: K = ⌊kbps·1000 / (⌈frame rate⌉·bits)⌋.
        bits_per_second = math.ceil(c["sampling_rate"] / math.prod(ratios)) * math.ceil(math.log2(c["codebook_size"]))
        n_q = int(1000 * c["target_bandwidths"][-1] // bits_per_second)
        if n_q < 1:
            raise ValueError(f"EnCodec config: target_bandwidths={c['target_bandwidths']} gives no codebook")
        return cls(sample_rate=c["sampling_rate"], n_filters=c["num_filters"], ratios=ratios, dimension=c["hidden_size"],
                   n_residual_layers=c["num_residual_layers"], lstm_layers=c["num_lstm_layers"], n_q=n_q,
                   codebook_size=c["codebook_size"], kernel_size=c["kernel_size"], last_kernel_size=c["last_kernel_size"],
                   residual_kernel_size=c["residual_kernel_size"], dilation_growth_rate=c["dilation_growth_rate"],
                   compress=c["compress"], use_conv_shortcut=bool(c["use_conv_shortcut"]), pad_mode=c["pad_mode"])


# ==== Blocks of the spectral codec (spectral_codec.py) ==================================================
class SameConv1d(nn.Module):
    """Non-causal conv whose output has ceil(L / stride) steps: zero padding split around the input.

    For stride 1 the total padding is (k - 1)·dilation; for the downsampling convs (k = 2r, stride r)
    it is r, so an input of length L = n·r gives exactly n outputs. (SEANet pads as EnCodec does:
    PaddedConv1d below.)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1):
        super().__init__()
        self.conv = conv1d(in_channels, out_channels, kernel_size, stride, dilation)
        self.stride = stride
        self.padding = (kernel_size - 1) * dilation - (stride - 1) if stride == 1 else kernel_size - stride

    def forward(self, x):
        B, C, L = x.shape
        assert L % self.stride == 0, f"length {L} is not a multiple of the stride {self.stride}"
        x = F.pad(x, (self.padding // 2, self.padding - self.padding // 2))
        return self.conv(x)  # (B, C, L) -> (B, C', L / stride)


class ResidualBlock(nn.Module):
    """Residual unit: x + conv1(act(conv_k(act(x)))), with a channel bottleneck of 2 (SEANet's unit with
    zero-padded convs; SEANet itself uses SEANetResidualBlock)."""

    def __init__(self, cfg, dim, kernel_size=3, dilation=1):
        super().__init__()
        self.block = nn.Sequential(activation(cfg), SameConv1d(dim, dim // 2, kernel_size, dilation=dilation),
                                   activation(cfg), SameConv1d(dim // 2, dim, 1))

    def forward(self, x):
        return x + self.block(x)  # (B, C, L) -> (B, C, L); EnCodec's "true skip" (identity shortcut)


# ==== the codec ==========================================================================================
class EncodecModel(nn.Module):
    """Encoder + RVQ + decoder, with the public names of DESIGN.md (sample_rate, frame_rate, n_q,
    codebook_size, encode, decode) and atomic save / weights-only load.

    The encoder and decoder come from `build_encoder` / `build_decoder`: SEANet here, the STFT pair in
    spectral_codec.SpectralEncodec. `spectral_codec.build_codec(cfg)` picks the class from the config."""

    def __init__(self, cfg: EncodecConfig):
        super().__init__()
        assert cfg.n_filters * 2 ** len(cfg.ratios) >= 2, "too few filters"
        if cfg.spectral and type(self).build_encoder is EncodecModel.build_encoder:
            raise ValueError("EncodecConfig(spectral=True) is built by spectral_codec.build_codec(cfg)")
        self.cfg = cfg
        self.encoder = self.build_encoder(cfg)
        self.quantizer = ResidualVectorQuantizer(cfg.dimension, cfg.n_q, cfg.codebook_size,
                                                 cfg.quantizer_dropout, cfg.ema_decay, cfg.dead_threshold)
        self.decoder = self.build_decoder(cfg)
        self.sample_rate, self.n_q, self.codebook_size = cfg.sample_rate, cfg.n_q, cfg.codebook_size
        self.hop_length, self.frame_rate = cfg.hop_length, cfg.frame_rate

    def build_encoder(self, cfg) -> nn.Module:
        return SEANetEncoder(cfg)

    def build_decoder(self, cfg) -> nn.Module:
        return SEANetDecoder(cfg)

    @property
    def bitrate(self) -> float:
        """Bits per second: each frame sends n_q indices of log2(codebook_size) bits (paper: 2.2 kbps)."""
        return self.quantizer.bitrate(self.frame_rate)

    def _pad(self, wav):
        """(B, C, N) -> the encoder's input. SEANet's convs pad each layer themselves (PaddedConv1d), as
        EnCodec does, so it takes (B, 1, N) as is; the STFT encoder needs whole frames, so its input gets
        zeros at the end up to (B, 1, T·hop), T = ceil(N / hop)."""
        B, C, N = wav.shape
        if C != 1:
            raise ValueError(f"the codec takes mono audio (B, 1, N), got {C} channels")
        if isinstance(self.encoder, SEANetEncoder):
            return wav
        T = math.ceil(N / self.hop_length)
        return F.pad(wav, (0, T * self.hop_length - N))

    def forward(self, wav, n_q=None, quantize=True):
        """Training pass: wav (B, 1, N) -> (reconstruction (B, 1, T·hop), codes (B, k, T), commitment).
        quantize=False skips the RVQ (codes None, commitment 0): the quantizer warm-up of train.py."""
        z = self.encoder(self._pad(wav))                       # (B, 1, T·hop) -> (B, D, T)
        if not quantize:
            return self.decoder(z), None, z.new_zeros(())
        z_hat, codes, commitment, _ = self.quantizer(z, n_q)   # (B, D, T) -> (B, D, T), (B, k, T)
        return self.decoder(z_hat), codes, commitment          # (B, D, T) -> (B, 1, T·hop)

    @torch.no_grad()
    def encode(self, wav, n_q=None):
        """wav (B, 1, N) -> codes (B, K, T), T = ceil(N / hop). Never updates the codebooks."""
        return self.quantizer.encode(self.encoder(self._pad(wav)), n_q)

    @functools.cached_property  # structural: measured once per model
    def lookahead_frames(self) -> int:
        """How many of an encoding's last frames depend on audio *after* its end.

        The encoder is non-causal (centred STFT windows, "same" convs; only its LSTM runs forward in
        time), so frame t also sees a few frames to its right. At the end of a clip those are padding
        (silence for the STFT encoder, a mirror image of the last samples for SEANet): encoding a
        prompt cut from the middle of a note gives last frames that say "the note stops here"
        (NOTES.md, "Continuation drops look-ahead frames"). Measured, not derived, so it holds for both
        encoders: change only the last frame of a noise signal and count the earlier frames whose
        latent moves.
        """
        T = 64
        generator = torch.Generator().manual_seed(0)
        wav = torch.randn(1, 1, T * self.hop_length, generator=generator)
        changed = wav.clone()
        changed[..., -self.hop_length:] = torch.randn(self.hop_length, generator=generator)
        device = next(self.parameters()).device
        with torch.no_grad():
            z, z_changed = (self.encoder(w.to(device)) for w in (wav, changed))  # (1, D, T) each
        moved = (z - z_changed).abs().amax(dim=1)[0] > 0                        # (T,)
        return T - 1 - int(moved.nonzero()[0])  # the last frame itself does not count

    @torch.no_grad()
    def decode(self, codes):
        """codes (B, k, T), k ≤ K (fewer codebooks = lower bitrate) -> wav (B, 1, T·hop)."""
        B, K, T = codes.shape
        if codes.min() < 0 or codes.max() >= self.codebook_size:
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{codes.min()}, {codes.max()}]")
        return self.decoder(self.quantizer.decode(codes))

    def save(self, path, step=0, **extra):
        """One self-describing dict (config, weights, step, + optimizer/RNG for resuming), written to a
        temp file and renamed, so an interrupted save never destroys the previous checkpoint."""
        ckpt = dict(config=asdict(self.cfg), model=self.state_dict(), step=step, **extra)
        tmp = f"{path}.tmp"
        torch.save(ckpt, tmp)
        os.replace(tmp, path)

    @classmethod
    def from_checkpoint(cls, ckpt, where="checkpoint"):
        """A model in eval mode from a checkpoint dict (see save); one-line ValueError if it does not fit."""
        try:
            model = cls(EncodecConfig(**ckpt["config"]))
            model.load_state_dict(ckpt["model"])
        except Exception as error:
            first_line = (str(error).strip().splitlines() or [""])[0]
            raise ValueError(f"{where}: not a readable codec checkpoint ({type(error).__name__}: {first_line})") from None
        return model.eval()

    @classmethod
    def from_hf(cls, config: dict, state_dict: dict) -> "EncodecModel":
        """The codec of a HF `transformers.EncodecModel` (e.g. MusicGen's 32 kHz EnCodec), in eval mode.

        Args:
            config: HF's EncodecConfig as a dict (config.json["audio_encoder"]; see EncodecConfig.from_hf).
            state_dict: that model's tensors, "audio_encoder." prefix removed. Our module tree is HF's,
                layer for layer, so the names agree except two spellings (hf_names): weight norm as
                weight_g / weight_v (the published files) or parametrizations.weight.original0 / 1
                (today's), and the codebooks' buffers quantizer.layers.K.codebook.{embed, embed_avg,
                cluster_size, inited}.
        An unsupported config field, or an unknown, missing or misshaped key, raises ValueError naming it.
        """
        model = cls(EncodecConfig.from_hf(config))
        names = {ours: hf_names(ours) for ours in model.state_dict()}  # ours -> HF's spellings
        known = {name for spellings in names.values() for name in spellings}
        unknown = [key for key in state_dict if key not in known]
        if unknown:
            raise ValueError(f"EnCodec state_dict: unexpected key {unknown[0]!r}")
        weights = {}
        for ours, target in model.state_dict().items():
            found = [name for name in names[ours] if name in state_dict]
            if len(found) != 1:
                raise ValueError(f"EnCodec state_dict: {'both spellings of' if found else 'missing'} {names[ours][0]!r}")
            value = state_dict[found[0]]
            if ours.endswith(".initialized") and value.numel() == 1:
                value = value.reshape(()).bool()  # HF keeps the flag as a float tensor [1.]
            if value.shape != target.shape:
                raise ValueError(f"EnCodec state_dict: {found[0]!r} has shape {tuple(value.shape)}, "
                                 f"the config gives {tuple(target.shape)}")
            weights[ours] = value.to(target.dtype)
        model.load_state_dict(weights)
        return model.eval()


def read_checkpoint(path, what="codec"):
    """torch.load with weights_only=True (a checkpoint can never run code); one-line errors."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no {what} checkpoint here (run `python train.py` first)") from None
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise ValueError(f"{path}: not a readable {what} checkpoint ({type(error).__name__}: {first_line})") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a {what} checkpoint (no config / model entries)")
    return ckpt


# ==== HF's names and defaults (EncodecModel.from_hf) =====================================================
# HF EncodecConfig's defaults, which a config.json may leave out (they are transformers' 24 kHz EnCodec).
HF_DEFAULTS = dict(model_type="encodec", sampling_rate=24000, audio_channels=1, normalize=False, chunk_length_s=None,
                   hidden_size=128, num_filters=32, num_residual_layers=1, upsampling_ratios=(8, 5, 4, 2),
                   norm_type="weight_norm", kernel_size=7, last_kernel_size=7, residual_kernel_size=3,
                   dilation_growth_rate=2, use_causal_conv=True, pad_mode="reflect", compress=2, num_lstm_layers=2,
                   trim_right_ratio=1.0, codebook_size=1024, codebook_dim=None, use_conv_shortcut=True,
                   target_bandwidths=(1.5, 3.0, 6.0, 12.0, 24.0))
# The fields whose other values we do not implement, with the values we do (MusicGen's codec uses the first).
# normalize: HF divides the input by its RMS and returns that scale with the codes; ours keeps only codes.
HF_SUPPORTED = dict(model_type=("encodec",), audio_channels=(1,), normalize=(False,), chunk_length_s=(None,),
                    norm_type=("weight_norm",), use_causal_conv=(False,), trim_right_ratio=(1.0,),
                    pad_mode=("reflect", "constant", "replicate"))
HF_CODEBOOK = {"codebook": "embed", "embed_sum": "embed_avg", "cluster_size": "cluster_size", "initialized": "inited"}
HF_WEIGHT_NORM = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def hf_names(name: str) -> list:
    """HF's spellings of one of our tensor names, today's first:
    "quantizer.layers.0.embed_sum" -> ["quantizer.layers.0.codebook.embed_avg"],
    "….conv.parametrizations.weight.original0" -> ["….conv.parametrizations.weight.original0", "….conv.weight_g"]."""
    head, _, leaf = name.rpartition(".")
    if name.startswith("quantizer."):
        return [f"{head}.codebook.{HF_CODEBOOK[leaf]}"]
    for new, old in HF_WEIGHT_NORM.items():
        if name.endswith(new):
            return [name, name[:-len(new)] + old]
    return [name]
