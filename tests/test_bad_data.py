"""A user's own folder: train.py checks the whole dataset before any training (the manifest, every audio
file's header), reports every problem at once, grouped, and exits with code 2, or trains on the good
clips with --skip-bad; numbers out of range are refused in one line. Odd but valid files pass."""
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import toy
import train
import stages

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
    """`python train.py ...` as the command line runs it (its exit code, stdout and stderr), in this
    process: a new Python with torch costs more than most of these runs."""
    argv = ["--data", str(folder), "--out", str(tmp_path / "run"), "--max-steps", "1", "--batch-size", "2",
            *map(str, extra)]
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            train.main(argv)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (print(exit.code, file=sys.stderr) or 1)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


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
    kind, where = words.split(" (1): ")
    assert len(lines) == 1 and lines[0].startswith("error: ") and where in lines[0] and "--skip-bad" in lines[0]
    assert not (tmp_path / "run" / "codec.pt").exists()


def test_several_problems_are_listed_grouped_in_a_few_lines(folder, tmp_path):
    for case in CASES:
        plant(case, folder)
    result = run_train(folder, tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[0].startswith("error: 5 problem(s)") and len(lines) == 1 + len(CASES)
    assert all(plant_words in result.stderr for plant_words in ("file not found (1)", "unreadable audio (1)",
                                                               "missing key (1)", "bad JSON (1)", "empty audio (1)"))


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


@pytest.mark.parametrize("option, says", [("--lm.pattern=bogus", "unknown pattern 'bogus'"),
                                          ("--lm.pattern=flatten", "--lm.input_codebooks=none")])
def test_a_pattern_the_lm_cannot_read_is_refused_before_the_codec_trains(option, says, folder, tmp_path):
    """The pattern is one config field (--lm.pattern): an unknown name, or a pattern the tiny LM (which
    reads codebook 1 only) could not read, fails in one line before any work."""
    result = run_train(folder, tmp_path, option)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and says in lines[0], lines
    assert not (tmp_path / "run" / "codec.pt").exists()


def test_clips_all_shorter_than_the_lm_window_are_refused_before_the_codec_trains(folder, tmp_path):
    result = run_train(folder, tmp_path, "--lm.window_seconds=30")
    assert result.returncode == 2 and "at least 30 s long" in result.stderr and not (tmp_path / "run" / "codec.pt").exists()


def test_odd_but_valid_files_pass_the_check_and_train(tmp_path):
    """A byte-order mark and Windows line ends, a path with spaces and non-ASCII letters, 6 channels,
    8-bit samples, 96 kHz, a wav cut in half, an mp3 renamed .wav, a clip of 0.1 s, a silent clip: all
    readable, so all fine."""
    folder = tmp_path / "odd"
    folder.mkdir()
    t = np.arange(96000) / 96000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    files = {"a clip é.wav": (np.stack([tone] * 6, axis=1), 96000, "PCM_16"),
             "half written.wav": (tone[:32000, None], 16000, "PCM_16"),  # cut in half below
             "an mp3.wav": (tone[:16000, None], 16000, "MP3"),
             "eight bit.wav": (tone[::6, None], 16000, "PCM_U8"),
             "short.wav": (tone[:1600, None], 16000, "PCM_16"),
             "silent.wav": (np.zeros((16000, 1)), 16000, "PCM_16")}
    for name, (samples, rate, subtype) in files.items():
        if subtype == "MP3":
            sf.write(folder / "tmp.mp3", samples, rate)
            (folder / "tmp.mp3").rename(folder / name)  # an mp3 renamed .wav
        else:
            sf.write(folder / name, samples, rate, subtype=subtype)
    raw = (folder / "half written.wav").read_bytes()
    (folder / "half written.wav").write_bytes(raw[:len(raw) // 2])  # another tool wrote half of it
    lines = [json.dumps({"path": name, "description": f"clip {i}", "split": "train"}, ensure_ascii=False)
             for i, name in enumerate(files)]
    (folder / "manifest.jsonl").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    good, problems = data.check_dataset(folder)
    assert problems == {} and len(good) == len(files)
    summary = stages.train_codec(tmp_path / "run", folder, train.replace(train.TINY, codec_batch=2),
                                      max_steps=1, eval_every=1000, n_valid=2)
    assert summary["steps"] == 1


def test_a_file_that_changes_on_disk_mid_run_saves_the_checkpoint_and_ends_in_one_line(folder, tmp_path,
                                                                                    monkeypatch, capsys):
    """The check passed; then a file became unreadable. The step that needs it stops the run: the codec
    is saved at the last finished step, the message names the file, exit code 2; --resume continues."""
    reads, read_window = [], data._read_window

    def changing(path, *args):
        reads.append(path)
        if len(reads) > 64 + 2 * 2:  # after k-means' 64 crops and two steps of two: the file went bad
            raise RuntimeError("Error opening file: Format not recognised.")
        return read_window(path, *args)
    monkeypatch.setattr(data, "_read_window", changing)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        train.main(["--data", str(folder), "--out", str(out), "--stage", "codec", "--max-steps", "5",
                    "--batch-size", "2", "--codec_quantizer_warmup=0"])
    err = capsys.readouterr().err  # the progress bars, then the one line
    message = err[err.index("error:"):].strip()
    assert stop.value.code == 2 and err.count("error:") == 1 and "\n" not in message and "Traceback" not in err
    assert "cannot be read any more" in message and "--resume" in message and str(reads[-1]) in message
    checkpoint = torch.load(out / "codec.pt", weights_only=True)
    assert checkpoint["step"] == 2
    monkeypatch.setattr(data, "_read_window", read_window)  # the file is fixed: the run continues
    train.main(["--data", str(folder), "--out", str(out), "--stage", "codec", "--max-steps", "5",
                "--batch-size", "2", "--codec_quantizer_warmup=0", "--resume"])
    assert torch.load(out / "codec.pt", weights_only=True)["step"] == 5


KILLED_WRITER = """
import os, signal, sys, torch
sys.path.insert(0, {root!r})
import lm as lm_module
real_save = torch.save

def dying_save(obj, f, *args, **kwargs):  # half of the checkpoint reaches the disk, then kill -9
    real_save(obj, f, *args, **kwargs)
    size = os.path.getsize(f)
    with open(f, "r+b") as handle:
        handle.truncate(size // 2)
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
model = lm_module.LMModel(lm_module.LMConfig(n_q=4, codebook_size=16, dim=32, n_layers=1, n_heads=2, ffn_dim=64,
    window_seconds=1.0, text_encoder="scratch", text_vocab_size=8, text_dim=16, text_layers=1, text_heads=2,
    sample_rate=16000, chroma_n_fft=2048, chroma_hop_length=512))
from conditioners import Tokenizer
lm_module.save_lm({path!r}, model, Tokenizer.build(["a tune"]), step=7)
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_checkpoint_valid(tmp_path):
    """A real process killed (SIGKILL) in the middle of writing lm.pt: the previous lm.pt, step 3, is
    untouched and loads; what the killed write left is a temporary file beside it."""
    import lm as lm_module
    from conditioners import Tokenizer
    path = tmp_path / "lm.pt"
    cfg = lm_module.LMConfig(n_q=4, codebook_size=16, dim=32, n_layers=1, n_heads=2, ffn_dim=64, window_seconds=1.0,
                             text_encoder="scratch", text_vocab_size=8, text_dim=16, text_layers=1, text_heads=2,
                             sample_rate=16000, chroma_n_fft=2048, chroma_hop_length=512)
    lm_module.save_lm(path, lm_module.LMModel(cfg), Tokenizer.build(["a tune"]), step=3)
    before = path.read_bytes()
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER.format(root=str(ROOT), path=str(path))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -9  # killed by SIGKILL, mid-write
    assert path.read_bytes() == before and lm_module.load_lm(path)[2]["step"] == 3


def test_a_fuzzed_manifest_gives_problems_never_an_exception(tmp_path, fuzz_cases):
    """Seeded fuzz of the manifest reader: random bytes (not UTF-8 either), truncated and mutated lines
    of a valid manifest, deep nesting. check_dataset returns problems; load_manifest raises ValueError."""
    folder = tmp_path / "fuzz"
    toy.make_toy_dataset(folder, n=3, seed=0)
    cases = fuzz_cases((folder / "manifest.jsonl").read_bytes(), n=80, max_flips=7, max_random=200)
    for i, case in enumerate(cases):
        (folder / "manifest.jsonl").write_bytes(case)
        good, problems = data.check_dataset(folder)
        assert all(isinstance(example, str) for examples in problems.values() for example in examples)
        try:
            data.load_manifest(folder)
        except ValueError as error:
            assert len(str(error).splitlines()) == 1, (i, str(error))


KILLED_RUN = """
import os, signal, sys, torch
sys.path.insert(0, {root!r})
import train
real_save, saves = torch.save, []

def dying_save(obj, f, *args, **kwargs):  # the second checkpoint: half written, then kill -9
    saves.append(f)
    real_save(obj, f, *args, **kwargs)
    if len(saves) == 2:
        with open(f, "r+b") as handle:
            handle.truncate(os.path.getsize(f) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
train.main(["--data", {data!r}, "--out", {out!r}, "--stage", "codec", "--max-steps", "4", "--batch-size", "2",
            "--eval-every", "2", "--codec_quantizer_warmup=0"])
"""


def test_a_run_killed_while_writing_its_checkpoint_resumes_from_the_previous_one(folder, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", KILLED_RUN.format(root=str(ROOT), data=str(folder), out=str(out))],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == -9, result.stderr[-2000:]  # killed in the write of step 4's checkpoint
    assert torch.load(out / "codec.pt", weights_only=True)["step"] == 2  # step 2's, intact
    train.main(["--data", str(folder), "--out", str(out), "--stage", "codec", "--max-steps", "4", "--batch-size", "2",
                "--eval-every", "2", "--codec_quantizer_warmup=0", "--resume"])
    assert torch.load(out / "codec.pt", weights_only=True)["step"] == 4
