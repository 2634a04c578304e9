"""The dataset format and its loader: a folder of audio files plus `manifest.jsonl` (DESIGN.md).

One JSON object a line: `path` (relative), `description`, optional `split` ("train" / "heldout"),
`attributes` (a dict; the toy data's labels, and `melody_path` for a drum-free melody stem),
`duration`, `sample_rate`. The toy dataset (toy.py) is written in this format and a user's own
folder is read the same way. Files of another rate or channel count are converted on load.

Two ways to read it: `load_clips` holds every clip in memory (evaluation, small folders); the training
stages read lazily instead, `clip_lengths` from the files' headers and `read_window` for one random
window at a time, so a manifest of any size costs memory for its entries only. The LM stage's codes
live on disk (`codes_array` / `open_codes`): one (K, total frames) array per split, memory-mapped.

Shapes: N samples; each clip is (1, N) float32 at the requested sample rate; K codebooks, T frames.
Data flow: manifest.jsonl + audio files ─load_clips / read_window─▶ stages.py, evaluate.py.
"""
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from audio import load_audio, resample, to_mono


def load_manifest(data_dir):
    """Read and check data_dir/manifest.jsonl. Each line needs "path" and "description"; entries
    without "split" get a stable one from a hash of the path (about one clip in ten "heldout"), so a user's own
    folder works. Errors name the manifest file and line (check_dataset lists them all at once)."""
    manifest = Path(data_dir) / "manifest.jsonl"
    entries = []
    for line_no, row in manifest_rows(data_dir):
        if isinstance(row, tuple):
            raise ValueError(f"{manifest}:{line_no}: {row[1]}")
        entries.append(row)
    if not entries:
        raise ValueError(f"{manifest}: no entries")
    return entries


def manifest_rows(data_dir):
    """(line number, entry or (kind, reason) it is not one) for each non-empty line of manifest.jsonl.
    UTF-8, with or without a byte-order mark, Unix or Windows line ends."""
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: not found; a dataset folder needs manifest.jsonl "
                                'with lines like {"path": "a.wav", "description": "sad piano"}')
    raw = manifest.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a byte-order mark, if an editor wrote one
    for line_no, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield line_no, ("not UTF-8", "the line is not UTF-8 text")
            continue
        if text.strip():
            yield line_no, manifest_entry(text, data_dir)


def manifest_entry(line: str, data_dir: Path):
    """One manifest line -> its entry (the split filled in), or (kind, reason) when it is not one."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        return "bad JSON", f"bad JSON ({error.msg})"
    except RecursionError:
        return "bad JSON", "bad JSON (nested too deeply)"
    if not isinstance(entry, dict):
        return "not an object", f"expected a JSON object, got {type(entry).__name__}"
    for key in ("path", "description"):
        if not isinstance(entry.get(key), str):
            return "missing key", f"missing or non-string key {key!r}"
    if not entry["description"].strip():
        return "empty description", "the description is empty (the LM learns the null condition by dropout)"
    attributes = entry.setdefault("attributes", {})
    if not isinstance(attributes, dict):
        return "bad attributes", "'attributes' must be an object"
    if not isinstance(attributes.get("melody_path", ""), str):
        return "bad attributes", "'melody_path' must be a string"
    for relative in (entry["path"], attributes.get("melody_path")):
        if relative is not None and not (data_dir / relative).is_file():
            return "file not found", f"audio file {data_dir / relative} not found"
    if "split" not in entry:
        digest = hashlib.sha1(entry["path"].encode()).digest()
        entry["split"] = "heldout" if digest[0] % 10 == 0 else "train"
    if entry["split"] not in ("train", "heldout"):
        return "bad split", f"split must be 'train' or 'heldout', got {entry['split']!r}"
    return entry


def check_dataset(data_dir):
    """Every problem of a dataset folder at once, from the manifest and the audio files' headers alone
    (no sample is decoded, so thousands of files take seconds) -> (good, problems): good is a list of
    (entry, seconds of its audio) that train, problems {kind: ["line N: reason", ...]}."""
    data_dir = Path(data_dir)
    good, problems = [], {}
    for line_no, row in manifest_rows(data_dir):
        if isinstance(row, dict):
            row, seconds = audio_header_problem(data_dir, row)
        if isinstance(row, tuple):
            problems.setdefault(row[0], []).append(f"line {line_no}: {row[1]}")
        else:
            good.append((row, seconds))
    return good, problems


def audio_header_problem(data_dir, entry):
    """-> (entry, its clip's seconds), or ((kind, reason), None) when its audio or melody file's header
    says soundfile cannot read it or it holds no sample."""
    seconds = None
    for relative in (entry["path"], entry["attributes"].get("melody_path")):
        if relative is None:
            continue
        try:
            info = sf.info(data_dir / relative)
        except Exception as error:  # soundfile's errors name the format problem
            reason = (str(error).strip().splitlines() or [""])[-1].split(": ")[-1]
            return ("unreadable audio", f"{relative}: not readable as audio ({reason})"), None
        if info.frames == 0 or info.samplerate <= 0:
            return ("empty audio", f"{relative}: holds no sample"), None
        seconds = info.frames / info.samplerate if seconds is None else seconds
    return entry, seconds


@dataclass
class Clip:
    path: str  # as written in the manifest, relative to the data folder
    wav: torch.Tensor  # (1, N) float32 at the requested sample rate
    description: str
    attributes: dict  # empty for user data without attributes
    split: str  # "train" | "heldout"
    melody_wav: torch.Tensor | None = None  # (1, N) drum-free melody stem, if the data has one


def load_clips(data_dir, sample_rate, split=None, limit=None):
    """Load every manifest entry (optionally one split, optionally the first `limit`) as mono audio at
    `sample_rate`."""
    if split not in (None, "train", "heldout"):
        raise ValueError(f"split must be None, 'train' or 'heldout', got {split!r}")
    data_dir = Path(data_dir)
    entries = [e for e in load_manifest(data_dir) if split is None or e["split"] == split][:limit]
    clips = []
    for entry in tqdm(entries, desc=f"loading {data_dir}", unit="clip"):
        melody_path = entry["attributes"].get("melody_path")
        clips.append(Clip(path=entry["path"], wav=load_audio(data_dir / entry["path"], sample_rate),
                          description=entry["description"], attributes=entry["attributes"],
                          split=entry["split"], melody_wav=None if melody_path is None
                          else load_audio(data_dir / melody_path, sample_rate)))
    return clips


# ---- lazy reading: lengths from headers, one window at a time ---------------------------------------
def clip_lengths(data_dir, paths, sample_rate):
    """Length in samples at `sample_rate` of each file (paths relative to data_dir), read from the file
    headers only. A resampled file has ceil(N · to / from) samples, as audio.resample gives."""
    lengths = []
    for path in paths:
        info = sf.info(Path(data_dir) / path)
        lengths.append(math.ceil(info.frames * sample_rate / info.samplerate))
    return lengths


class DataError(Exception):
    """A dataset file that cannot be read when a training step needs it (changed on disk after the
    check): the stages save their checkpoint and re-raise it; train.py ends with its one line."""


def read_window(path, sample_rate, start, length):
    """Samples [start, start + length) of a file at `sample_rate`, (1, length), zero-padded past its end,
    reading only that part of the file. At the file's own rate it equals load_audio(path)[:, start:start +
    length]; otherwise a margin of input samples around the window feeds the resampler's filter, and the
    read begins on a sample where input and output grids meet, so the result matches the whole file's
    resampling away from the file's ends. A file that cannot be read raises DataError."""
    try:
        return _read_window(path, sample_rate, start, length)
    except Exception as error:  # soundfile's and the OS's errors, whatever the file became
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise DataError(f"{path}: cannot be read any more ({reason})") from None


def _read_window(path, sample_rate, start, length):
    """read_window's reading, any error left as it comes."""
    info = sf.info(path)
    if info.samplerate == sample_rate:
        first, offset = start, 0
        frames = length
    else:
        g = math.gcd(info.samplerate, sample_rate)
        up, down = sample_rate // g, info.samplerate // g     # output j sits at input j · down / up
        margin = 64 * max(1, down // up + 1)                  # > the filter's half-length in input samples
        first = max(0, (start * down // up - margin) // down * down)
        offset = start - first * up // down                   # output samples before the window
        frames = math.ceil((offset + length) * down / up) + margin
    data, _ = sf.read(path, start=first, frames=frames, dtype="float32", always_2d=True)  # (n, C)
    wav = to_mono(torch.from_numpy(np.ascontiguousarray(data.T)))                     # (C, n) -> (1, n)
    if info.samplerate != sample_rate:
        wav = resample(wav, info.samplerate, sample_rate)[:, offset:]
    wav = wav[:, :length]
    return torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))  # (1, length)


class Windows(torch.utils.data.Dataset):
    """The windows a batch plan names, read from disk when asked: item (path, start, length) -> (1, length)
    at `sample_rate`. A DataLoader with workers reads the next steps' windows while this one trains."""

    def __init__(self, data_dir, sample_rate):
        self.data_dir, self.sample_rate = Path(data_dir), sample_rate

    def __getitem__(self, item):
        path, start, length = item
        return read_window(self.data_dir / path, self.sample_rate, start, length)


def plan_loader(dataset, plans, workers=0):
    """A DataLoader whose batches are the lists of items `plans` yields, one list per step (the items are
    whatever `dataset` takes: file windows, code windows)."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=plans, num_workers=workers,
                                       persistent_workers=False)


# ---- batch plans: which windows a step reads, drawn from the step's generator --------------------
def crop_plan(paths, lengths, batch, crop, generator):
    """A global batch of random crops: `batch` items (path, start, crop) over the clips `paths` with
    `lengths` samples (crops past a clip's end are zero-padded when read)."""
    ids = torch.randint(0, len(paths), (batch,), generator=generator)
    return [(paths[i], int(torch.randint(0, max(1, lengths[i] - crop + 1), (1,), generator=generator)), crop)
            for i in ids.tolist()]


def window_plan(frames, pool, batch, window, generator):
    """A global batch of random windows: `batch` items (clip, start frame) over the clips `pool`, whose
    lengths in frames are `frames` (every clip in the pool is at least one window long)."""
    picks = pool[torch.randint(0, len(pool), (batch,), generator=generator)].tolist()
    return [(i, int(torch.randint(0, max(1, frames[i] - window + 1), (1,), generator=generator))) for i in picks]


class CodeWindows(torch.utils.data.Dataset):
    """Item (clip, start frame) of one split -> codes (K, T) int64 from the memory-mapped array and the
    aligned melody audio (1, T · hop) read from disk (the clip's melody stem if it has one).

    With `chroma` (the LM's ChromaExtractor) the item's second part is the melody's chroma (F, 12)
    instead of its audio, and each window's chroma is kept once computed: it depends on the window's
    audio alone, and windows come back every epoch (the toy's 4 s windows of 4 s clips always start at
    frame 0), so later epochs neither read the audio nor take its 8192-point STFT again. Up to
    `memo_bytes` of chroma are kept; windows past that are computed each time."""

    def __init__(self, folder, split, data_dir, melody_paths, sample_rate, hop, window, chroma=None,
                 memo_bytes=2 ** 26):
        self.folder, self.split, self.data_dir, self.melody_paths = folder, split, Path(data_dir), melody_paths
        self.sample_rate, self.hop, self.window = sample_rate, hop, window
        self.chroma, self.memo, self.memo_bytes = chroma, {}, memo_bytes
        self.codes = None  # opened on first use, in whichever process (DataLoader worker) reads

    def __getitem__(self, item):
        i, start = item
        if self.codes is None:
            self.codes, self.index = open_codes(self.folder, self.split)
        first = self.index["offsets"][i] + start
        codes = torch.from_numpy(self.codes[:, first:first + self.window].astype(np.int64))  # (K, T)
        if (i, start) in self.memo:
            return codes, self.memo[i, start]
        melody = read_window(self.data_dir / self.melody_paths[i], self.sample_rate,
                             start * self.hop, self.window * self.hop)                # (1, T · hop)
        if self.chroma is None:
            return codes, melody
        with torch.no_grad():
            chroma = self.chroma(melody[None])[0]                                     # (1, 1, T · hop) -> (F, 12)
        if (len(self.memo) + 1) * chroma.numel() * chroma.element_size() <= self.memo_bytes:
            self.memo[i, start] = chroma
        return codes, chroma


# ---- the LM stage's codes on disk: one memory-mapped array per split --------------------------------
def codes_array(folder, split, shape=None):
    """`folder/{split}.npy`: int16 codes (K, total frames), clip after clip, memory-mapped (read from disk
    on access, never loaded whole). With `shape` the file is created (rank 0), without it opened for
    writing (the other ranks, after a barrier). int16 holds codebooks of up to 32768 entries."""
    path = Path(folder) / f"{split}.npy"
    if shape is not None:
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=shape)
    return np.load(path, mmap_mode="r+")


def open_codes(folder, split):
    """The codes of one split, memory-mapped read-only, and their index: {"entries": manifest line
    numbers, "offsets": clip i's frames are offsets[i]:offsets[i + 1]}."""
    folder = Path(folder)
    index = json.loads((folder / "index.json").read_text())[split]
    return np.load(folder / f"{split}.npy", mmap_mode="r"), index


def write_json_atomic(path, obj):
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(obj))
    os.replace(tmp, path)
