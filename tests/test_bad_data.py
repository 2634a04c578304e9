"""A user's own folder: train.py checks the whole dataset before any training (the manifest, every audio
file's header), reports every problem at once, grouped, and exits with code 2, or trains on the good
clips with --skip-bad; numbers out of range are refused in one line. Odd but valid files pass."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data
import toy
import train
import train_codec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path):
    toy.make_toy_dataset(tmp_path / "data", n=12, seed=0)
    return tmp_path / "data"


def rows(folder):
    return (folder / "manifest.jsonl").read_text().splitlines()


def write_rows(folder, lines, **kwargs):
    (folder / "manifest.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""), **kwargs)


def run_train(folder, tmp_path, *extra):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(folder), "--out",
                           str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "2", *map(str, extra)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def plant(case, folder):
    """Plant one fault; returns the words the report must contain."""
    lines = rows(folder)
    if case == "a deleted audio file":
        (folder / json.loads(lines[10])["path"]).unlink()
        return "file not found (1): line 11"
    if case == "a melody that is not audio":
        (folder / json.loads(lines[3])["attributes"]["melody_path"]).write_bytes(b"garbage, not a wav")
        return "unreadable audio (1): line 4"
    if case == "a path that is a number":
        write_rows(folder, lines + ['{"path": 3}'])
        return "missing key (1): line 13"
    if case == "a line that is not JSON":
        write_rows(folder, lines + ["{not json"])
        return "bad JSON (1): line 13"
    if case == "an empty audio file":
        sf.write(folder / "empty.wav", np.zeros((0, 1), dtype=np.float32), 16000)
        write_rows(folder, lines + [json.dumps({"path": "empty.wav", "description": "nothing"})])
        return "empty audio (1): line 13"
    raise ValueError(case)


CASES = ["a deleted audio file", "a melody that is not audio", "a path that is a number", "a line that is not JSON",
         "an empty audio file"]


@pytest.mark.parametrize("case", CASES)
def test_each_fault_is_reported_before_any_training_with_exit_code_2(case, folder, tmp_path):
    words = plant(case, folder)
    result = run_train(folder, tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: 1 problem(s)") and "--skip-bad" in lines[0] and words in result.stderr
    assert len(lines) <= 8 and not (tmp_path / "run" / "codec.pt").exists()


def test_every_problem_at_once_and_skip_bad_trains_on_the_rest(folder, tmp_path):
    for case in CASES[:3]:
        plant(case, folder)
    good, problems = data.check_dataset(folder)
    assert len(good) == 10 and sum(map(len, problems.values())) == 3 and len(problems) == 3
    result = run_train(folder, tmp_path, "--stage", "codec", "--skip-bad")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--skip-bad: 3 clip(s) skipped" in result.stdout and (tmp_path / "run" / "codec.pt").exists()


def test_an_empty_manifest_and_a_missing_one_are_one_line(folder, tmp_path):
    write_rows(folder, [])
    result = run_train(folder, tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"error: {folder / 'manifest.jsonl'}: no entries"]
    (folder / "manifest.jsonl").unlink()
    result = run_train(folder, tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "not found" in result.stderr


@pytest.mark.parametrize("flag, value", [("--max-steps", -3), ("--batch-size", 0), ("--lr", "nan"), ("--seed", -1),
                                         ("--eval-every", 0), ("--codec_steps=0", None), ("--lm_lr=-1", None),
                                         ("--lm.window_seconds=0", None)])
def test_numbers_out_of_range_are_one_line_and_exit_code_2(flag, value, folder, tmp_path):
    result = run_train(folder, tmp_path, flag, *([] if value is None else [value]))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and flag.split("=")[0] in lines[0]


def test_clips_all_shorter_than_the_lm_window_are_refused_before_the_codec_trains(folder, tmp_path):
    result = run_train(folder, tmp_path, "--lm.window_seconds=30")
    assert result.returncode == 2 and "at least 30 s long" in result.stderr and not (tmp_path / "run" / "codec.pt").exists()


def test_odd_but_valid_files_pass_the_check_and_train(tmp_path):
    """A byte-order mark and Windows line ends, a path with spaces and non-ASCII letters, 6 channels,
    8-bit samples, 96 kHz, a clip of 0.1 s, a silent clip: all fine."""
    folder = tmp_path / "odd"
    folder.mkdir()
    t = np.arange(96000) / 96000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    files = {"a clip é.wav": (np.stack([tone] * 6, axis=1), 96000, "PCM_16"),
             "eight bit.wav": (tone[::6, None], 16000, "PCM_U8"),
             "short.wav": (tone[:1600, None], 16000, "PCM_16"),
             "silent.wav": (np.zeros((16000, 1)), 16000, "PCM_16")}
    for name, (samples, rate, subtype) in files.items():
        sf.write(folder / name, samples, rate, subtype=subtype)
    lines = [json.dumps({"path": name, "description": f"clip {i}", "split": "train"}, ensure_ascii=False)
             for i, name in enumerate(files)]
    (folder / "manifest.jsonl").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    good, problems = data.check_dataset(folder)
    assert problems == {} and len(good) == 4
    summary = train_codec.train_codec(tmp_path / "run", folder, train.replace(train.TINY, codec_batch=2),
                                      max_steps=1, eval_every=1000, n_valid=2)
    assert summary["steps"] == 1
