"""The toy dataset: a synthetic stand-in for the paper's 20K hours of licensed music.

MusicGen trains on 20K hours of licensed music with text descriptions (§4.1); for melody
conditioning it removes drums and bass with a source separator before extracting the chromagram
(§2.4). We cannot ship that, so this file synthesises a small, fully labelled stand-in:

  clip = monophonic melody (C major or C natural minor, tonic always C, so the modes differ in
         E/Eb, A/Ab, B/Bb; the first note is the third) at one of 3 tempi (one onset on every
         beat), in a low (C5..C6) or high (C6..C7) register, played by one of 5 synthesised
         instruments, with or without drums.

Every clip is written as a real 16-bit wav plus its melody-only stem (our stand-in for the
separated, drum-free audio the paper extracts chroma from), and one `manifest.jsonl` line with a
natural-language description, the attributes, and the melody's pitch track (MIDI note per frame,
0 = rest) as ground truth for melody metrics, in the format data.py reads (a user's own folder
has the same format, so `train.py --data DIR` and the toy data share one code path).

Deviation from the paper (ours, for evaluation): a fixed set of (instrument, mode, tempo)
combinations appears only in the "heldout" split, so we can test whether the model composes
attributes it has only seen apart. About 20% of train descriptions omit one attribute, as real
captions do; held-out descriptions state all five.

Shapes: C channels, N samples; audio is float32 in [-1, 1], shape (C, N) per file.
Data flow: toy.py -> wav files + manifest.jsonl -> data.load_clips -> train.py (codec, then LM).

    python toy.py --out data/toy      # train.py does this itself when data/toy is missing
"""
import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

import data
from audio import midi_to_hz, write_audio

SAMPLE_RATE = 16000  # Hz; the paper uses 32 kHz, we halve it so tiny models train on a CPU
CLIP_SECONDS = 4.0  # the paper trains on 30 s crops
PITCH_FRAME_RATE = 25.0  # pitch-track frames per second (= the tiny codec's frame rate)
ATTRIBUTES = {"instrument": ("flute", "clarinet", "strings", "guitar", "bell"),
              "tempo": ("slow", "medium", "fast"), "mode": ("major", "minor"),
              "register": ("low", "high"), "drums": ("drums", "no drums")}
BPM = {"slow": 70, "medium": 110, "fast": 160}
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}  # natural minor
# C5 and C6; melodies span scale degrees 0..7 (one octave), so the registers meet at C6. Lower registers
# were tried: the tiny codec kept their pitch class far worse (NOTES.md, "Toy data choices").
TONIC_MIDI = {"low": 72, "high": 84}
# Combinations seen only in the held-out split: every instrument, mode and tempo still appears in
# training (each mode 3 times here, each tempo twice, each instrument at least once).
HELDOUT_COMBOS = (("flute", "minor", "fast"), ("clarinet", "major", "slow"),
                  ("strings", "minor", "medium"), ("guitar", "major", "medium"),
                  ("bell", "minor", "slow"), ("strings", "major", "fast"))
HELDOUT_FRACTION = 0.12
OMIT_FRACTION = 0.2  # train descriptions that leave one attribute unsaid
# Scale degree of every melody's first note: 2 = the third, the note that tells major from minor.
# The tonic is shared by both modes, and the first note is the one the LM must choose from the text
# alone (NOTES.md, "Toy data choices").
FIRST_DEGREE = 2


# ----------------------------------------------------------------------------- melody
# Bars of 4 beats (negative = rest). Every beat starts a note; only the articulation varies (a half-beat
# note then a half-beat rest), so the onset rate is the tempo (70 BPM: 1.17 notes/s, 110: 1.83, 160: 2.67)
# and the onsets are exactly periodic, which makes the tempo audible (NOTES.md, "Toy data choices").
BAR_PATTERNS = ((1, 1, 1, 1), (1, 1, 1, .5, -.5), (.5, -.5, 1, 1, 1), (1, .5, -.5, 1, 1),
                (1, 1, .5, -.5, 1))


def _compose(bpm, mode, register, duration, rng, modal_share=0.3):
    """A random walk on scale degrees 0..7 starting on the third, ending on the tonic, tonic triad on
    strong beats. The first note is the one an LM must choose from the description alone (there is
    no audio before it); starting on the third (E or Eb) makes that note tell the mode.
    Returns notes as (onset seconds, length seconds, MIDI note or 0 for a rest)."""
    beats, t, end = [], 0.0, duration * bpm / 60  # (onset, length, is rest) in beats
    while t < end:
        for length in BAR_PATTERNS[rng.integers(len(BAR_PATTERNS))]:
            if t < end:
                beats.append((t, min(abs(length), end - t), length < 0))
            t += abs(length)
    sounding = [i for i, (_, _, rest) in enumerate(beats) if not rest]
    for _ in range(100):  # redraw until the notes that tell major from minor are well heard
        degrees, previous = {}, 0
        for i in sounding:
            if i == sounding[0]:
                degree = FIRST_DEGREE
            elif beats[i][0] % 2 == 0:  # beats 1 and 3 of the bar: a tonic-triad tone nearby
                triad = np.array([0, 2, 4, 7])
                weights = 1 / (1 + abs(triad - previous))
                degree = int(rng.choice(triad, p=weights / weights.sum()))
            else:  # otherwise mostly stepwise motion, reflected at the ends of the octave
                degree = previous + int(rng.choice([-2, -1, 1, 2], p=[.15, .35, .35, .15]))
                degree = -degree if degree < 0 else (14 - degree if degree > 7 else degree)
            degrees[i] = previous = degree
        degrees[sounding[-1]] = 0 if previous < 4 else 7  # end on the tonic
        # Degrees 2, 5, 6 (E/Eb, A/Ab, B/Bb) are the only ones that differ between the modes.
        modal = sum(beats[i][1] for i in sounding if degrees[i] in (2, 5, 6))
        if modal >= modal_share * sum(beats[i][1] for i in sounding):
            break
    scale, tonic = SCALES[mode], TONIC_MIDI[register]
    return [(onset * 60 / bpm, length * 60 / bpm,
             0 if rest else tonic + 12 * (degrees[i] // 7) + scale[degrees[i] % 7])
            for i, (onset, length, rest) in enumerate(beats)]


def _pitch_track(notes, duration):
    """MIDI note sounding at the centre of each PITCH_FRAME_RATE frame (0 = rest)."""
    centres = (np.arange(round(duration * PITCH_FRAME_RATE)) + 0.5) / PITCH_FRAME_RATE
    onsets = np.array([onset for onset, _, _ in notes])
    index = np.searchsorted(onsets, centres, side="right") - 1
    return [int(notes[i][2]) if centre < notes[i][0] + notes[i][1] else 0
            for i, centre in zip(index, centres)]


# ----------------------------------------------------------------------------- instruments
# Each takes (frequency Hz, length in samples, sample_rate, rng) and returns the raw tone (n,).
# Additive tones are band-limited: no partial above 0.45 * sample_rate, so nothing aliases.

def _harmonic_tone(freq, n, sample_rate, amplitudes, vibrato=0.0):
    """Sum of harmonics via a one-period wavetable read at the (optionally vibrato) phase."""
    t = np.arange(n) / sample_rate
    # 5 Hz vibrato, faded in over 0.3 s: a player settles the pitch before adding vibrato.
    inst_freq = freq * (1 + vibrato * np.sin(2 * np.pi * 5 * t) * np.minimum(t / 0.3, 1))
    cycles = np.cumsum(inst_freq) / sample_rate  # phase in cycles
    limit = int(0.45 * sample_rate / (freq * (1 + vibrato)))  # highest harmonic below Nyquist
    amplitudes = np.asarray(amplitudes[:limit], dtype=np.float64)
    grid = np.arange(2048) / 2048  # one period
    table = np.sin(2 * np.pi * np.outer(grid, np.arange(1, len(amplitudes) + 1))) @ amplitudes
    position = (cycles % 1) * 2048
    return np.interp(position, np.arange(2049), np.append(table, table[0]))  # linear, wraps


def _flute(freq, n, sample_rate, rng):
    return _harmonic_tone(freq, n, sample_rate, [1.0, 0.2], vibrato=0.004)  # sine + weak 2nd


def _clarinet(freq, n, sample_rate, rng):
    k = np.arange(1, 200)
    return _harmonic_tone(freq, n, sample_rate, np.where(k % 2 == 1, 1 / k, 0))  # odd: square


def _strings(freq, n, sample_rate, rng):
    saw = 1 / np.arange(1, 200)  # all harmonics 1/k: sawtooth, like a bowed string
    # A second, quieter player detuned by 0.4 Hz: a slow shimmer whose beating (0.4 Hz) stays well
    # below the note rates (>= 1.17 notes/s), so it cannot be mistaken for tempo.
    return (_harmonic_tone(freq - 0.2, n, sample_rate, saw)
            + 0.4 * _harmonic_tone(freq + 0.2, n, sample_rate, saw))


def _guitar(freq, n, sample_rate, rng, t60=1.5):
    """Karplus-Strong: a noise burst circulating in a delay line of one period through a low-pass
    loop filter h: y[i] = g * sum_k h[k] y[i - P - k]. Every tap reaches back at least P samples,
    so a block of P samples depends only on earlier blocks: we run the recursion one period at a
    time with array operations instead of a Python loop per sample.
    h = [1-s, s] (Jaffe & Smith's decay stretching: the classic average is s = 1/2) convolved with
    a cubic Lagrange fractional delay (tunes the period to a fraction of a sample). High notes go
    round the loop more often, so s shrinks with pitch to keep every note ringing about t60."""
    omega = 2 * np.pi * freq / sample_rate
    budget = np.log(1000) / (t60 * freq)  # log-amplitude a trip may lose: -60 dB after t60
    q = min(0.25, budget / omega ** 2)  # [1-s, s] costs ~ s(1-s) omega^2 / 2: half the budget
    s = (1 - np.sqrt(1 - 4 * q)) / 2
    P = int(sample_rate / freq - 1 - s)  # whole samples of delay; the rest, d in [1, 2):
    d = sample_rate / freq - P - s  # Lagrange taps at 0..3 interpolate a delay of d samples
    lagrange = np.array([-(d - 1) * (d - 2) * (d - 3) / 6, d * (d - 2) * (d - 3) / 2,
                         -d * (d - 1) * (d - 3) / 2, d * (d - 1) * (d - 2) / 6])
    h = np.convolve([1 - s, s], lagrange)  # 5 taps, delay s + d
    response = abs(np.sum(h * np.exp(-1j * omega * np.arange(5))))  # |H| at the fundamental
    gain = min(1.0, np.exp(-budget) / response)  # the rest of the decay; <= 1 keeps it stable
    smooth = max(2, P // 4)  # a moving average shapes the burst: a finger, not a sharp pick
    burst = np.convolve(rng.uniform(-1, 1, P + smooth - 1), np.ones(smooth) / smooth, "valid")
    y = np.zeros(n + 4)  # four leading zeros so taps P+1..P+4 exist in the first block
    y[4:4 + min(P, n)] = (burst - burst.mean())[:n]
    for start in range(4 + P, n + 4, P):
        end = min(start + P, n + 4)
        y[start:end] = gain * sum(h[k] * y[start - P - k:end - P - k] for k in range(5))
    return y[4:]


def _bell(freq, n, sample_rate, rng):
    """FM synthesis: sin(2 pi f t + I(t) sin(2 pi 1.4 f t)); the 1:1.4 ratio gives inharmonic
    partials |f +- 1.4 m f|. The index I drops after the strike but stays at 0.7, so those
    partials ring on while the carrier stays the strongest (J0(0.7) > J1(0.7)): a clear pitch.
    I is capped so the sidebands that matter (order <= I + 2) stay below Nyquist."""
    t = np.arange(n) / sample_rate
    index_cap = max(0.0, (0.45 * sample_rate - freq) / (1.4 * freq) - 2)
    index = np.minimum(0.7 + 1.3 * np.exp(-t / 0.06), index_cap)  # strike, then a steady shimmer
    tone = np.sin(2 * np.pi * freq * t + index * np.sin(2 * np.pi * 1.4 * freq * t))
    return tone * (0.6 * np.exp(-t / 0.08) + 0.4 * np.exp(-t / 1.0))  # sharp strike, long ring


INSTRUMENTS = {"flute": (_flute, 0.08), "clarinet": (_clarinet, 0.03),  # (tone, attack seconds)
               "strings": (_strings, 0.12), "guitar": (_guitar, 0.002), "bell": (_bell, 0.003)}


def _render_melody(notes, instrument, n, sample_rate, rng):
    """Place each note at its onset; every note fits its slot, so the melody stays monophonic."""
    tone_fn, attack = INSTRUMENTS[instrument]
    out = np.zeros(n)
    for onset, length, midi in notes:
        start = int(round(onset * sample_rate))
        size = min(int(round(length * sample_rate)), n - start)
        if midi == 0 or size <= 0:
            continue
        tone = tone_fn(midi_to_hz(midi), size, sample_rate, rng)
        # Comparable loudness: every note has the same RMS over its first 0.25 s.
        tone = 0.25 * tone / (np.sqrt(np.mean(tone[:int(0.25 * sample_rate)] ** 2)) + 1e-9)
        rise = max(1, min(int(attack * sample_rate), int(0.4 * size)))
        fall = max(1, min(int(0.06 * sample_rate), int(0.25 * size)))
        envelope = np.ones(size)
        envelope[:rise] = np.linspace(0, 1, rise, endpoint=False)
        envelope[-fall:] = np.minimum(envelope[-fall:], np.linspace(1, 0, fall))
        out[start:start + size] += tone * envelope
    return out


def _render_drums(bpm, n, sample_rate, rng):
    """Kick on beats 1 and 3, snare on 2 and 4, hi-hat on every eighth note."""
    t = np.arange(int(0.3 * sample_rate)) / sample_rate  # every hit has died out after 0.3 s
    sweep = 50 + 100 * np.exp(-t / 0.03)  # the kick's pitch falls from 150 to 50 Hz
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / sample_rate) * np.exp(-t / 0.12)
    out, eighth = np.zeros(n + len(t)), 30 / bpm  # room for the last hit's tail
    for step in range(int(n / sample_rate / eighth) + 1):
        start = int(round(step * eighth * sample_rate))
        hit = slice(start, start + len(t))
        # hi-hat: differencing x[i] - x[i-1] is a simple high-pass on white noise
        out[hit] += 0.075 * np.diff(rng.uniform(-1, 1, len(t) + 1)) * np.exp(-t / 0.02)
        if step % 4 == 0:
            out[hit] += 0.6 * kick
        if step % 4 == 2:  # snare: a noise burst plus a 185 Hz body
            out[hit] += 0.35 * (0.7 * rng.uniform(-1, 1, len(t)) * np.exp(-t / 0.06)
                                + 0.5 * np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.08))
    return out[:n]


def _synthesize_clip(attributes, rng, sample_rate=SAMPLE_RATE, duration=CLIP_SECONDS):
    """Returns (mix (N,), melody stem (N,), pitch track list) for one attribute dict."""
    n = int(round(duration * sample_rate))
    bpm = BPM[attributes["tempo"]]
    notes = _compose(bpm, attributes["mode"], attributes["register"], duration, rng)
    melody = _render_melody(notes, attributes["instrument"], n, sample_rate, rng)
    drums = _render_drums(bpm, n, sample_rate, rng) if attributes["drums"] == "drums" else 0
    mix = melody + drums
    fade = np.minimum(1, (n - np.arange(n)) / (0.01 * sample_rate))  # no click at the cut
    gain = 0.9 / (np.abs(mix * fade).max() + 1e-9)  # peak-normalise the mix; the stem gets the
    return mix * fade * gain, melody * fade * gain, _pitch_track(notes, duration)  # same gain


# ----------------------------------------------------------------------------- descriptions
NOUNS = {"flute": ("a flute", "an airy flute", "a breathy flute"),  # instrument noun phrases
         "clarinet": ("a clarinet", "a reedy clarinet", "a woody clarinet"),
         "strings": ("strings", "a string section", "bowed strings"),
         "guitar": ("a guitar", "a plucked guitar", "an acoustic guitar"),
         "bell": ("bells", "a bell", "chiming bells")}
ADJECTIVES = {"slow": ("slow", "unhurried", "leisurely"), "medium": ("moderate", "mid-tempo",
              "medium-tempo"), "fast": ("fast", "quick", "brisk"),
              "major": ("happy", "cheerful", "joyful"), "minor": ("sad", "melancholic", "gloomy"),
              "low": ("low", "deep", "low-pitched"), "high": ("high", "high-pitched", "lofty")}
PHRASES = {"major": ("in a major key",), "minor": ("in a minor key",),
           "low": ("in a low register", "in the low range"),
           "high": ("in a high register", "in the upper range"),
           "drums": ("with drums", "with a drum beat", "with percussion", "over a drum groove"),
           "no drums": ("without drums", "no percussion", "with no drums", "unaccompanied")}


def _describe(attributes, stated, rng):
    """A description stating exactly the attributes in `stated`, in one of four templates."""
    def pick(options):
        return options[rng.integers(len(options))]
    def article(word):
        return ("an " if word[0] in "aeiou" else "a ") + word
    adjectives, phrases = [], []  # "sad" vs "in a minor key": same value, different position
    for name in ("tempo", "mode", "register", "drums"):
        if name not in stated:
            continue
        value = attributes[name]
        if name == "drums" or (name != "tempo" and rng.random() < 0.3):
            phrases.append(pick(PHRASES[value]))
        else:
            adjectives.append(pick(ADJECTIVES[value]))
    rng.shuffle(adjectives)
    rng.shuffle(phrases)
    noun = pick(("tune", "melody", "piece"))
    core = " ".join(adjectives + [noun])
    tail = "".join(" " + p for p in phrases)
    if "instrument" not in stated:
        return article(core) + tail
    instrument = pick(NOUNS[attributes["instrument"]])
    bare = instrument.split(" ", 1)[1] if instrument.startswith(("a ", "an ")) else instrument
    template = rng.integers(4)
    if template == 0:  # "a cheerful fast tune on a plucked guitar with drums"
        return f"{article(core)} on {instrument}{tail}"
    if template == 1:  # "a clarinet playing a sad slow melody in a high register"
        return f"{instrument} playing {article(core)}{tail}"
    if template == 2:  # "slow, sad strings, in a low register, no percussion"
        return ", ".join(adjectives + [bare] + phrases)
    # "a piece for plucked guitar, fast and sad, with drums"
    return ", ".join([f"a {noun} for {bare}"] + ([" and ".join(adjectives)] if adjectives else [])
                     + phrases)


# ----------------------------------------------------------------------------- dataset
def _sample_attributes(rng):
    """Draw the (instrument, mode, tempo) combination first, so that held-out combinations get
    HELDOUT_FRACTION of the clips on average; register and drums are independent coin flips."""
    heldout = rng.random() < HELDOUT_FRACTION
    pool = [c for c in itertools.product(ATTRIBUTES["instrument"], ATTRIBUTES["mode"],
                                         ATTRIBUTES["tempo"]) if (c in HELDOUT_COMBOS) == heldout]
    instrument, mode, tempo = pool[rng.integers(len(pool))]
    attributes = {"instrument": instrument, "tempo": tempo, "bpm": BPM[tempo], "mode": mode,
                  "register": ATTRIBUTES["register"][rng.integers(2)],
                  "drums": ATTRIBUTES["drums"][rng.integers(2)]}
    return ("heldout" if heldout else "train"), attributes


def make_toy_dataset(out_dir, n=1000, seed=0, sample_rate=SAMPLE_RATE, duration=CLIP_SECONDS):
    """Write n clips (clips/NNNNN.wav), their melody stems (stems/NNNNN_melody.wav) and
    manifest.jsonl into out_dir. Clip i depends only on (seed, i): same seed -> same bytes."""
    out_dir = Path(out_dir)
    lines = []
    for i in tqdm(range(n), desc="toy dataset", unit="clip"):
        rng = np.random.default_rng([seed, i])  # independent stream per clip
        split, attributes = _sample_attributes(rng)
        stated = list(ATTRIBUTES)
        if split == "train" and rng.random() < OMIT_FRACTION:
            stated.remove(stated[rng.integers(len(stated))])
        description = _describe(attributes, stated, rng)
        mix, melody, pitch = _synthesize_clip(attributes, rng, sample_rate, duration)
        path, melody_path = f"clips/{i:05d}.wav", f"stems/{i:05d}_melody.wav"
        write_audio(out_dir / path, mix, sample_rate, strategy="clip")  # already at their level
        write_audio(out_dir / melody_path, melody, sample_rate, strategy="clip")
        attributes.update(stated=stated, melody_path=melody_path, pitch=pitch,
                          pitch_frame_rate=PITCH_FRAME_RATE)
        lines.append(json.dumps({"path": path, "description": description, "duration": duration,
                                 "sample_rate": sample_rate, "split": split,
                                 "attributes": attributes}))
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main():
    parser = argparse.ArgumentParser(description="Write the synthetic toy music dataset.")
    parser.add_argument("--out", default="data/toy", help="output folder")
    parser.add_argument("--n", type=int, default=1000, help="number of clips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-rate", type=int, default=SAMPLE_RATE)
    parser.add_argument("--duration", type=float, default=CLIP_SECONDS, help="seconds per clip")
    args = parser.parse_args()
    manifest = make_toy_dataset(args.out, args.n, args.seed, args.sample_rate, args.duration)
    entries = data.load_manifest(args.out)
    for split in ("train", "heldout"):
        subset = [e["attributes"] for e in entries if e["split"] == split]
        print(f"{split}: {len(subset)} clips; " + "; ".join(
            f"{name} " + " ".join(f"{v}={sum(a[name] == v for a in subset)}" for v in values)
            for name, values in ATTRIBUTES.items()))
    print(f"wrote {manifest}; held-out only: {', '.join('/'.join(c) for c in HELDOUT_COMBOS)}")


if __name__ == "__main__":
    main()
