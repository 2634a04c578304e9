"""The dataset format and its loader: a folder of audio files plus `manifest.jsonl` (DESIGN.md).

One JSON object a line: `path` (relative), `description`, optional `split` ("train" / "heldout"),
`attributes` (a dict; the toy data's labels, and `melody_path` for a drum-free melody stem),
`duration`, `sample_rate`. The toy dataset (toy.py) is written in this format and a user's own
folder is read the same way. Files of another rate or channel count are converted on load.

Shapes: N samples; each clip is (1, N) float32 at the requested sample rate.
Data flow: manifest.jsonl + audio files ─load_clips─▶ [Clip] ─▶ train_codec.py, train_lm.py, evaluate.py.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from audio import load_audio


def load_manifest(data_dir):
    """Read and check data_dir/manifest.jsonl. Each line needs "path" and "description"; entries
    without "split" get a stable one from a hash of the path (about one clip in ten "heldout"), so a user's own
    folder works. Errors name the manifest file and line."""
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: not found; a dataset folder needs manifest.jsonl "
                                'with lines like {"path": "a.wav", "description": "sad piano"}')
    entries = []
    for line_no, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{manifest}:{line_no}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: bad JSON ({error.msg})") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        for key in ("path", "description"):
            if not isinstance(entry.get(key), str):
                raise ValueError(f"{where}: missing or non-string key {key!r}")
        attributes = entry.setdefault("attributes", {})
        if not isinstance(attributes, dict):
            raise ValueError(f"{where}: 'attributes' must be an object")
        for relative in (entry["path"], attributes.get("melody_path")):
            if relative is not None and not (data_dir / relative).is_file():
                raise ValueError(f"{where}: audio file {data_dir / relative} not found")
        if "split" not in entry:
            digest = hashlib.sha1(entry["path"].encode()).digest()
            entry["split"] = "heldout" if digest[0] % 10 == 0 else "train"
        if entry["split"] not in ("train", "heldout"):
            raise ValueError(f"{where}: split must be 'train' or 'heldout', got {entry['split']!r}")
        entries.append(entry)
    if not entries:
        raise ValueError(f"{manifest}: no entries")
    return entries


@dataclass
class Clip:
    path: str  # as written in the manifest, relative to the data folder
    wav: torch.Tensor  # (1, N) float32 at the requested sample rate
    description: str
    attributes: dict  # empty for user data without attributes
    split: str  # "train" | "heldout"
    melody_wav: torch.Tensor | None = None  # (1, N) drum-free melody stem, if the data has one


def load_clips(data_dir, sample_rate, split=None):
    """Load every manifest entry (optionally one split) as mono audio at `sample_rate`."""
    if split not in (None, "train", "heldout"):
        raise ValueError(f"split must be None, 'train' or 'heldout', got {split!r}")
    data_dir = Path(data_dir)
    entries = [e for e in load_manifest(data_dir) if split is None or e["split"] == split]
    clips = []
    for entry in tqdm(entries, desc=f"loading {data_dir}", unit="clip"):
        melody_path = entry["attributes"].get("melody_path")
        clips.append(Clip(path=entry["path"], wav=load_audio(data_dir / entry["path"], sample_rate),
                          description=entry["description"], attributes=entry["attributes"],
                          split=entry["split"], melody_wav=None if melody_path is None
                          else load_audio(data_dir / melody_path, sample_rate)))
    return clips
