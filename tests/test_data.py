"""Tests for data.py: the toy dataset (determinism, format, held-out split, audible attributes)
and the audio helpers (resampler accuracy, bad files, mono, normalisation)."""
import itertools
import json
import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch

import audio
import data
import toy as toy_data


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """One small dataset shared by the format tests (generating audio is the slow part)."""
    out = tmp_path_factory.mktemp("toy")
    toy_data.make_toy_dataset(out, n=20, seed=3)
    return out


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- dataset
def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        toy_data.make_toy_dataset(tmp_path / name, n=4, seed=seed)
    a, b, c = (files_of(tmp_path / name) for name in "abc")
    assert len(a) == 2 * 4 + 1 and a == b  # clips + stems + manifest, byte for byte
    assert a.keys() == c.keys()
    assert not set(a.values()) & set(c.values())  # no file shared, not even shifted by one index


def test_clip_depends_only_on_seed_and_index(tmp_path):
    toy_data.make_toy_dataset(tmp_path / "few", n=2, seed=5)
    toy_data.make_toy_dataset(tmp_path / "more", n=5, seed=5)
    for name in ("clips/00000.wav", "clips/00001.wav", "stems/00001_melody.wav"):
        assert (tmp_path / "few" / name).read_bytes() == (tmp_path / "more" / name).read_bytes()


def test_manifest_format(toy):
    lines = (toy / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 20
    for line in lines:
        entry = json.loads(line)
        assert set(entry) == {"path", "description", "duration", "sample_rate", "split",
                              "attributes"}
        assert entry["duration"] == toy_data.CLIP_SECONDS and entry["sample_rate"] == toy_data.SAMPLE_RATE
        assert entry["split"] in ("train", "heldout")
        assert isinstance(entry["description"], str) and len(entry["description"].split()) >= 2
        attributes = entry["attributes"]
        for name, values in toy_data.ATTRIBUTES.items():
            assert attributes[name] in values
        assert attributes["bpm"] == toy_data.BPM[attributes["tempo"]]
        assert set(attributes["stated"]) <= set(toy_data.ATTRIBUTES)
        assert len(attributes["stated"]) >= 4
        if entry["split"] == "heldout":
            assert sorted(attributes["stated"]) == sorted(toy_data.ATTRIBUTES)
        for key in ("path", "melody_path"):
            relative = entry[key] if key == "path" else attributes[key]
            info = sf.info(toy / relative)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert info.frames == 16000 * 4
        pitch = attributes["pitch"]
        assert attributes["pitch_frame_rate"] == 25.0 and len(pitch) == 4 * 25
        low = toy_data.TONIC_MIDI[attributes["register"]]
        high = low + 12
        assert all(p == 0 or low <= p <= high for p in pitch)
        scale = toy_data.SCALES[attributes["mode"]]
        assert all(p == 0 or (p % 12) in scale for p in pitch)
        assert pitch[0] == low + scale[toy_data.FIRST_DEGREE]  # every melody starts on the third (E or Eb)


def test_descriptions_state_their_attributes(toy):
    """Each stated value is said with one of its own words; no word serves two values."""
    words = {value: set(toy_data.ADJECTIVES.get(value, ())) | set(toy_data.PHRASES.get(value, ()))
             for values in toy_data.ATTRIBUTES.values() for value in values}
    for value, nouns in toy_data.NOUNS.items():
        words[value] = {noun.split(" ", 1)[-1] if noun.startswith(("a ", "an ")) else noun
                        for noun in nouns}
    for (v1, w1), (v2, w2) in itertools.combinations(words.items(), 2):
        assert not w1 & w2, (v1, v2)
    for entry in data.load_manifest(toy):
        text, attributes = entry["description"], entry["attributes"]
        for name in attributes["stated"]:
            said = [w for w in words[attributes[name]] if re.search(rf"\b{re.escape(w)}\b", text)]
            assert said, (text, name)


def test_heldout_combinations_never_in_train():
    combos = {"train": set(), "heldout": set()}
    for i in range(3000):  # the sampler alone is cheap, so check many draws
        split, a = toy_data._sample_attributes(np.random.default_rng([0, i]))
        combos[split].add((a["instrument"], a["mode"], a["tempo"]))
    assert combos["heldout"] == set(toy_data.HELDOUT_COMBOS)
    assert not combos["train"] & combos["heldout"]
    assert len(combos["train"]) == 30 - len(toy_data.HELDOUT_COMBOS)
    for position, name in enumerate(("instrument", "mode", "tempo")):  # nothing unseen in train
        assert {c[position] for c in combos["train"]} == set(toy_data.ATTRIBUTES[name])


def test_heldout_split_in_written_dataset(toy):
    entries = data.load_manifest(toy)
    for entry in entries:
        a = entry["attributes"]
        is_heldout = (a["instrument"], a["mode"], a["tempo"]) in toy_data.HELDOUT_COMBOS
        assert is_heldout == (entry["split"] == "heldout")


def test_load_clips_converts_rate_and_filters_split(toy):
    clips = data.load_clips(toy, 8000)
    assert len(clips) == 20
    for clip in clips:
        assert clip.wav.shape == (1, 8000 * 4) and clip.wav.dtype == torch.float32
        assert clip.melody_wav.shape == (1, 8000 * 4)
    train = data.load_clips(toy, 16000, split="train")
    assert {c.split for c in train} == {"train"}
    assert len(train) == sum(c.split == "train" for c in clips)
    reread, _ = audio.read_audio(toy / train[0].path)
    assert torch.equal(train[0].wav, reread)


def test_mix_is_melody_stem_plus_drums(toy):
    """The stem is the mix without drums, at the same gain: identical when there are no drums."""
    for entry in data.load_manifest(toy):
        mix, _ = audio.read_audio(toy / entry["path"])
        melody, _ = audio.read_audio(toy / entry["attributes"]["melody_path"])
        difference = (mix - melody).abs().max().item()
        if entry["attributes"]["drums"] == "no drums":
            assert difference < 2e-4  # 16-bit rounding only
        else:
            assert difference > 0.05


def render(instrument, register, mode="major", tempo="medium", drums="no drums", seed=0):
    attributes = dict(instrument=instrument, register=register, mode=mode, tempo=tempo, drums=drums)
    return toy_data._synthesize_clip(attributes, np.random.default_rng(seed))


def spectral_centroid(wav):
    power = np.abs(np.fft.rfft(wav)) ** 2
    return (np.fft.rfftfreq(len(wav), 1 / toy_data.SAMPLE_RATE) * power).sum() / power.sum()


@pytest.mark.parametrize("instrument", toy_data.ATTRIBUTES["instrument"])
def test_register_is_audible(instrument):
    low = spectral_centroid(render(instrument, "low")[1])
    high = spectral_centroid(render(instrument, "high")[1])
    assert high > 1.5 * low


@pytest.mark.parametrize("instrument", ["flute", "clarinet", "strings", "guitar"])
def test_pitch_track_matches_audio(instrument):
    """In the middle of each note the strongest pitch class of the stem is the labelled note."""
    _, melody, pitch = render(instrument, "high", seed=1)
    hop, n_fft = toy_data.SAMPLE_RATE // 25, 2048
    frequencies = np.fft.rfftfreq(n_fft, 1 / toy_data.SAMPLE_RATE)[1:]
    pitch_class = np.round(12 * np.log2(frequencies / 440) + 69).astype(int) % 12
    checked = 0
    for t in range(2, len(pitch) - 2):
        if pitch[t] == 0 or len(set(pitch[t - 2:t + 3])) > 1:
            continue  # only frames well inside a note
        centre = t * hop + hop // 2
        window = melody[centre - n_fft // 2:centre + n_fft // 2] * np.hanning(n_fft)
        power = np.abs(np.fft.rfft(window)) ** 2
        chroma = np.bincount(pitch_class, power[1:], minlength=12)
        assert chroma.argmax() == pitch[t] % 12, (t, pitch[t])
        checked += 1
    assert checked > 20


def test_instruments_band_limited():
    """No partial above 0.45 * sample_rate: the highest notes do not alias."""
    for instrument in ("flute", "clarinet", "strings", "bell"):
        _, melody, _ = render(instrument, "high", seed=2)
        power = np.abs(np.fft.rfft(melody)) ** 2
        above = power[np.fft.rfftfreq(len(melody), 1 / toy_data.SAMPLE_RATE) > 7400].sum()
        assert above < 1e-4 * power.sum(), instrument


# ----------------------------------------------------------------------------- resampler
def tone(freq, rate, seconds=1.0, amplitude=0.5):
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def zero_crossing_frequency(wav, rate):
    """Frequency from the spacing of upward zero crossings (linearly interpolated)."""
    x = wav.double().numpy()
    i = np.nonzero((x[:-1] < 0) & (x[1:] >= 0))[0]
    crossings = i + x[i] / (x[i] - x[i + 1])
    return (len(crossings) - 1) / (crossings[-1] - crossings[0]) * rate


@pytest.mark.parametrize("from_rate,to_rate", [(44100, 16000), (16000, 44100), (48000, 16000)])
def test_resample_keeps_frequency_and_amplitude(from_rate, to_rate):
    wav = tone(440.0, from_rate)
    out = audio.resample(wav, from_rate, to_rate)
    assert out.shape == (math.ceil(len(wav) * to_rate / from_rate),)
    inner = out[to_rate // 10:-to_rate // 10]  # away from the zero-padded edges
    assert zero_crossing_frequency(inner, to_rate) == pytest.approx(440.0, rel=1e-3)
    assert inner.abs().max().item() == pytest.approx(0.5, rel=0.01)
    spectrum = torch.fft.rfft(inner * torch.hann_window(len(inner)), n=1 << 18).abs()
    assert spectrum.argmax().item() * to_rate / (1 << 18) == pytest.approx(440.0, rel=0.01)
    reference = tone(440.0, to_rate)[to_rate // 10:-to_rate // 10]
    assert (inner - reference).abs().max() < 1e-3  # also in phase: no delay introduced


def test_resample_removes_content_above_new_nyquist():
    out = audio.resample(tone(10000.0, 44100), 44100, 16000)  # 10 kHz cannot exist at 16 kHz
    assert out[1600:-1600].abs().max() < 1e-3


def test_resample_identity_and_leading_dims():
    wav = torch.randn(2, 3, 1000)
    assert torch.equal(audio.resample(wav, 16000, 16000), wav)
    out = audio.resample(wav, 16000, 24000)
    assert out.shape == (2, 3, 1500)
    assert torch.allclose(out[1, 2], audio.resample(wav[1, 2], 16000, 24000))
    with pytest.raises(ValueError):
        audio.resample(wav, 16000, 0)


# ----------------------------------------------------------------------------- audio helpers
def test_read_audio_stereo_round_trip(tmp_path):
    path = tmp_path / "stereo.wav"
    wav = torch.stack([tone(440.0, 8000, 0.1), -tone(440.0, 8000, 0.1)])  # (2, 800)
    audio.write_audio(path, wav, 8000, strategy="clip")  # no levelling: the samples as they are
    read, rate = audio.read_audio(path)
    assert rate == 8000 and read.shape == (2, 800) and read.dtype == torch.float32
    assert (read - wav).abs().max() < 1e-4  # 16-bit quantisation only
    assert audio.to_mono(read).abs().max() < 1e-4  # the channels cancel
    assert audio.load_audio(path, 16000).shape == (1, 1600)


def test_a_decoder_overshoot_is_levelled_not_clipped(tmp_path):
    """A decoder output peaking at 1.4 is written at the stated peak (0.9) with its shape intact; the
    'clip' strategy keeps the samples and warns that it clipped them; 'rms' hits its loudness target."""
    t = torch.arange(16000) / 16000
    wav = 1.4 * torch.sin(2 * math.pi * 440 * t) * torch.linspace(0.2, 1, 16000)  # peaks at 1.4 at the end
    audio.write_audio(tmp_path / "peak.wav", wav, 16000)
    read, _ = audio.read_audio(tmp_path / "peak.wav")
    assert read.abs().max() == pytest.approx(audio.PEAK, abs=1e-3) and (read.abs() >= 0.999).sum() == 0
    assert torch.allclose(read[0], wav * (audio.PEAK / wav.abs().max()), atol=1e-4)  # the same waveform, scaled
    with pytest.warns(UserWarning, match="clipped"):
        audio.write_audio(tmp_path / "clip.wav", wav, 16000, strategy="clip")
    assert (audio.read_audio(tmp_path / "clip.wav")[0].abs() >= 0.999).sum() > 100
    quiet = audio.normalize_audio(0.01 * wav, "rms", rms=0.1)
    assert quiet.pow(2).mean().sqrt() == pytest.approx(0.1, rel=1e-4) and quiet.abs().max() <= audio.PEAK
    assert audio.normalize_audio(wav, "rms", rms=0.9).abs().max() == pytest.approx(audio.PEAK)  # capped
    assert torch.equal(audio.normalize_audio(torch.zeros(5)), torch.zeros(5))
    with pytest.raises(ValueError, match="strategy"):
        audio.normalize_audio(wav, "loud")


def test_read_audio_bad_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio" * 10)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1)), 16000)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.5]), 16000, subtype="FLOAT")
    for path, reason in ((tmp_path / "missing.wav", "no such"), (garbage, "cannot read"),
                         (empty, "empty"), (nan, "NaN")):
        with pytest.raises(audio.AudioError, match=reason) as error:
            audio.read_audio(path)
        assert path.name in str(error.value)


def test_to_mono_and_peak_normalize():
    wav = torch.tensor([[1.0, 2.0, -3.0], [3.0, 0.0, 1.0]])
    assert torch.equal(audio.to_mono(wav), torch.tensor([[2.0, 1.0, -1.0]]))
    with pytest.raises(ValueError):
        audio.to_mono(torch.zeros(2, 2, 2))
    normalized = audio.peak_normalize(wav)
    assert normalized.abs().max().item() == pytest.approx(0.9)
    assert torch.allclose(normalized, 0.3 * wav)  # one gain for all channels
    assert torch.equal(audio.peak_normalize(torch.zeros(1, 5)), torch.zeros(1, 5))


# ----------------------------------------------------------------------------- manifest errors
def write_manifest(folder, lines):
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")


def test_load_manifest_errors_name_file_and_line(tmp_path):
    audio.write_audio(tmp_path / "a.wav", torch.zeros(100), 16000)
    good = json.dumps({"path": "a.wav", "description": "a sad tune"})
    for bad, reason in (("{not json", "bad JSON"), (json.dumps({"path": "a.wav"}), "description"),
                        (json.dumps({"path": "gone.wav", "description": "x"}), "gone.wav"),
                        (json.dumps([1, 2]), "JSON object")):
        write_manifest(tmp_path, [good, bad])
        with pytest.raises(ValueError, match=reason) as error:
            data.load_manifest(tmp_path)
        assert "manifest.jsonl:2" in str(error.value)
    with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
        data.load_manifest(tmp_path / "nowhere")


def test_user_folder_gets_stable_hash_split(tmp_path):
    """A user's folder: no split, other sample rate, stereo; still loads through the same path."""
    lines = []
    for i in range(40):
        audio.write_audio(tmp_path / f"song{i}.wav", torch.zeros(2, 441), 44100)
        lines.append(json.dumps({"path": f"song{i}.wav", "description": f"song {i}"}))
    write_manifest(tmp_path, lines)
    splits = [e["split"] for e in data.load_manifest(tmp_path)]
    assert splits == [e["split"] for e in data.load_manifest(tmp_path)]  # deterministic
    assert 0 < splits.count("heldout") < 15
    clip = data.load_clips(tmp_path, 16000, split="train")[0]
    assert clip.wav.shape == (1, 160) and clip.melody_wav is None and clip.attributes == {}


def test_every_beat_starts_a_note():
    """The onsets are exactly periodic (toy_data.BAR_PATTERNS): a sounding note on every beat, none between."""
    for tempo, bpm in toy_data.BPM.items():
        notes = toy_data._compose(bpm, "minor", "low", 4.0, np.random.default_rng(7))
        beat = 60 / bpm
        onsets = [round(onset / beat, 6) for onset, _, midi in notes if midi]  # in beats
        assert onsets == [float(i) for i in range(len(onsets))], tempo
        assert len(onsets) == math.ceil(4.0 / beat)
