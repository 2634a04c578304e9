"""experiments/: the research scripts run end to end on a micro budget (they run, not how well)."""
import subprocess
import sys
from pathlib import Path

import pytest

import toy
from encodec import EncodecModel
from train import TINY_CODEC


@pytest.mark.slow  # the default run keeps its 2-minute budget; CI runs this file's slow tests
def test_count_check_script_runs_every_option():
    """count_check.py end to end on 2 steps with every knob on: it trains, scores and samples without error
    and prints the teacher-forced and sampled beat figures (the 2.5-minute measurements are in NOTES.md)."""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-m", "experiments.count_check", "--steps", "2", "--codebooks", "4",
                             "--noisy-finer", "--hide-finer", "--flicker", "0.1", "--rests", "0.2"],
                            capture_output=True, text=True, cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "teacher-forced P(new note): on the beat" in result.stdout
    assert result.stdout.count("sampled runs on the half-beat grid") == 3


@pytest.mark.slow  # 17 s
def test_count_check_runs_on_a_codecs_tokens(tmp_path):
    """count_check.py --codec: the codec's tokens of a dataset's training clips as training data, the
    samples decoded and scored by the probe (an untrained codec and 2 steps: it runs, not how well)."""
    root = Path(__file__).resolve().parents[1]
    toy.make_toy_dataset(tmp_path / "toy", n=12, seed=0)  # every tempo has training clips
    (tmp_path / "run").mkdir()
    EncodecModel(TINY_CODEC).save(tmp_path / "run" / "codec.pt")  # untrained
    result = subprocess.run([sys.executable, "-m", "experiments.count_check", "--steps", "2", "--codebooks", "4",
                             "--pitch-tracks", str(tmp_path / "toy"), "--codec", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("the probe hears the tempo of") == 2  # the training clips and the samples
