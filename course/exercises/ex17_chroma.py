"""Exercise 17 (§2.4, melody conditioning): the chromagram, and its dominant pitch class.

MusicGen conditions on a melody through its chroma: per STFT frame, the energy of the 12 pitch classes
(C, C#, ..., B), of which only the loudest is kept, one-hot, "to avoid overfitting" (§2.4):

    power_f = |STFT(wav)_f|² / Σ w²                 (Hann window w, n_fft, hop; centred frames)
    chroma_f = W · power_f                          (W = self.filterbank, (12, n_fft/2 + 1), given)
    chroma_f ← chroma_f / max(max_c chroma_f[c], 1e-6),  then one-hot at its argmax (self.argmax)

Write `ChromaExtractor.forward` in conditioners.py: wav (B, C, N) → chroma (B, F, 12), F = N // hop + 1
(torch.stft with center=True). Any channel count: average the channels first. A clip shorter than n_fft
is zero-padded on both sides to n_fft. With gate_silence=True a frame whose chroma maximum is below
self.silence becomes all zeros (a rest is not a played C). Work in float32 whatever the input dtype.
"""
import math

import torch

import conditioners
from course.grading import Exercise, Wrong

EXERCISE = Exercise(
    number=17, title="The chroma: STFT, pitch classes, argmax", section="§2.4",
    blanks=[("conditioners.py", "ChromaExtractor.forward")],
    hints=["Mono first: wav.float().mean(dim=1) is (B, N). Then torch.stft(mono, self.n_fft, self.hop_length, "
           "window=self.window, center=True, return_complex=True).abs() ** 2, divided by window.pow(2).sum().",
           "The spectrum is (B, n_bins, F) and the filter bank (12, n_bins): torch.einsum('cf,bft->btc', bank, spec) "
           "gives (B, F, 12) directly.",
           "Normalise each frame by its maximum (clamp it at 1e-6), then one-hot: "
           "torch.nn.functional.one_hot(chroma.argmax(-1), 12).float(). Keep the maximum for the silence gate."],
)
SR = 16000
NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def tone(freq, seconds=1.0, amplitude=0.5):
    t = torch.arange(int(SR * seconds)) / SR
    return (amplitude * torch.sin(2 * math.pi * freq * t))[None, None]  # (1, 1, N)


def midi_hz(note):
    return 440.0 * 2 ** ((note - 69) / 12)


def check_one_frame_per_hop_and_twelve_classes():
    """Shape: (B, F, 12) with F = N // hop + 1, one-hot rows, for a batch of two clips."""
    extractor = conditioners.ChromaExtractor(SR)
    wav = torch.cat([tone(440.0), tone(261.63)])  # (2, 1, N)
    chroma = extractor(wav)
    frames = wav.shape[-1] // extractor.hop_length + 1
    if not isinstance(chroma, torch.Tensor) or tuple(chroma.shape) != (2, frames, 12):
        raise Wrong(f"expected chroma of shape (B, F, 12) = (2, {frames}, 12) (F = N // hop + 1 with centred "
                    f"frames), got {tuple(getattr(chroma, 'shape', ()))}: is the STFT's (B, bins, F) turned into (B, F, 12)?")
    if chroma.dtype != torch.float32 or not torch.equal(chroma.sum(-1), torch.ones(2, frames)):
        raise Wrong("each frame must be one-hot (a single 1.0 at the loudest pitch class), float32")


def check_pure_tones_name_their_pitch_class():
    """A sine at each of the 12 notes of the octave above middle C is read as its own pitch class."""
    extractor = conditioners.ChromaExtractor(SR)
    wav = torch.cat([tone(midi_hz(60 + c)) for c in range(12)])  # C4 .. B4
    chroma = extractor(wav)
    classes = chroma[:, 1:-1].argmax(-1)  # inner frames, (12, F - 2)
    for c in range(12):
        got = torch.bincount(classes[c], minlength=12).argmax()
        if int(got) != c:
            raise Wrong(f"a {NAMES[c]} ({midi_hz(60 + c):.1f} Hz) is read as {NAMES[int(got)]}: is the filter bank "
                        "applied to the power spectrum over the frequency bins (bank @ spectrum), not over time?")


def check_channels_are_averaged_and_dtype_is_float32():
    """Stereo and bfloat16 input: the channels are averaged, the result is float32."""
    extractor = conditioners.ChromaExtractor(SR)
    left, right = torch.zeros(1, 1, SR), tone(midi_hz(67))  # G4 on the right channel only
    chroma = extractor(torch.cat([left, right], dim=1).to(torch.bfloat16))  # (1, 2, N)
    if chroma.shape[0] != 1 or chroma.shape[-1] != 12:
        raise Wrong(f"a stereo clip (1, 2, N) must give one chromagram (1, F, 12), got {tuple(chroma.shape)}: "
                    "average the channels first (mean over dim 1)")
    if chroma.dtype != torch.float32:
        raise Wrong(f"the chroma must be float32 whatever the input dtype (a power spectrum overflows half "
                    f"precision), got {chroma.dtype}")
    if int(chroma[0, 2:-2].argmax(-1).mode().values) != 7:
        raise Wrong("a G4 on the right channel of a stereo clip is not read as G: average the channels "
                    "(wav.mean(dim=1)) rather than taking the first")


def check_the_loudest_class_wins_and_frames_are_max_normalised():
    """A loud E over a quiet A gives E; without the argmax each frame's maximum is 1."""
    mix = tone(midi_hz(64), amplitude=0.6) + tone(midi_hz(69), amplitude=0.15)
    one_hot = conditioners.ChromaExtractor(SR)(mix)
    if int(one_hot[0, 2:-2].argmax(-1).mode().values) != 4:
        raise Wrong("a loud E with a quiet A must give E in every frame: the argmax over the 12 classes "
                    "(the last dimension)")
    soft = conditioners.ChromaExtractor(SR, argmax=False)(mix)[0, 2:-2]  # (F', 12)
    if not torch.allclose(soft.amax(-1), torch.ones(soft.shape[0]), atol=1e-5):
        raise Wrong(f"with argmax=False each frame is divided by its maximum, so its largest class is 1.0; "
                    f"got maxima {soft.amax(-1)[:4].tolist()}")
    if not soft[:, 9].gt(0.02).all() or not soft[:, 9].lt(0.5).all():
        raise Wrong("with argmax=False the quiet A keeps a small share (between 0.02 and 0.5 of the E's)")


def check_silence_gate_and_short_clips():
    """gate_silence: rests become all-zero frames; a clip shorter than n_fft still gives a frame."""
    extractor = conditioners.ChromaExtractor(SR, gate_silence=True)
    wav = torch.cat([tone(midi_hz(62), seconds=1.0), torch.zeros(1, 1, 2 * SR)], dim=-1)  # D4, then 2 s of rest
    chroma = extractor(wav)[0]
    if chroma[-4:].abs().sum() != 0:
        raise Wrong("with gate_silence=True the frames of the rest must be all zero (their chroma maximum is "
                    "below self.silence), not a one-hot C")
    if int(chroma[2].argmax()) != 2 or chroma[2].sum() != 1:
        raise Wrong("with gate_silence=True a played D must still be one-hot D")
    short = extractor(tone(midi_hz(62), seconds=0.2))  # 3200 samples < n_fft = 8192
    if short.shape[1] != 1 + extractor.n_fft // extractor.hop_length or int(short[0, 1].argmax()) != 2:
        raise Wrong(f"a clip shorter than n_fft is zero-padded on both sides to n_fft samples, then framed: "
                    f"expected {1 + extractor.n_fft // extractor.hop_length} frames with a D, got {tuple(short.shape)}")
