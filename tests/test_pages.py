"""Both pages in a real browser (headless Chromium; slow, run by CI): a micro `python train.py` run's
training page and an evaluation page load every player and every picture, fetch nothing from the
network, and leave a screenshot beside them. Skipped, with a message, where Chromium is missing."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate
import page
import toy
import train
from audio import write_audio
from pictures import chromagram_png, spectrogram_png

ROOT = Path(__file__).resolve().parents[1]
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(BROWSER is None, reason="needs headless Chromium (apt-get install chromium)")]


def check_page(index: Path):
    result = subprocess.run([sys.executable, "-m", "experiments.check_page", str(index), "--browser", BROWSER],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (index.parent / "screenshot.png").stat().st_size > 10_000
    return result.stdout


def test_the_training_page_of_a_micro_run_loads_in_a_browser(tmp_path):
    toy.make_toy_dataset(tmp_path / "toy", n=12, seed=0)
    out = tmp_path / "run"
    train.main(["--data", str(tmp_path / "toy"), "--out", str(out), "--max-steps", "10", "--batch-size", "2",
                "--eval-every", "5"])
    state = page.load(out)
    assert len(state["snapshots"]) == 4 and [s["percent"] for s in state["snapshots"]] == [10, 30, 60, 100]
    assert state["codec"]["rows"] and state["lm"]["evals"] and state["reconstructions"] and state["recipe"]
    output = check_page(out / "index.html")
    # Every snapshot's 3 samples, the melody given, each codec pair; the melody samples also show chromagrams.
    players = 3 * len(state["snapshots"]) + 1 + 2 * len(state["reconstructions"])
    pictures = players + len(state["snapshots"]) + 1
    assert f"{players} players and {pictures} pictures loaded, 0 failed" in output


def test_the_evaluation_page_loads_in_a_browser(tmp_path):
    sr, rows = 16000, []
    for i in range(2):
        cells = []
        for j, name in enumerate(["real clip", "melody stem (chroma source)", "text + melody, cfg_coef 2"]):
            path = tmp_path / "samples" / f"item{i}_{j}.wav"
            path.parent.mkdir(exist_ok=True)
            wav = torch.sin(torch.arange(sr) * 2 * torch.pi * (220 + 110 * j) / sr)[None]
            write_audio(path, wav, sr)
            path.with_suffix(".png").write_bytes(spectrogram_png(wav, sr))
            if j:
                path.with_name(path.stem + "_chroma.png").write_bytes(chromagram_png(torch.rand(8, 12), 7.8))
            cells.append((name, path.relative_to(tmp_path).as_posix(), ""))
        rows.append((f"description {i}", cells))
    table3 = {name: dict(valid_nll_per_codebook=[3.0, 4.0, 4.5, 5.0], adherence=0.5, frechet=1.0,
                         decoding_steps_10s=503, generation_seconds=1.0) for name in ("delay", "flatten")}
    index = evaluate.write_listening_page(tmp_path, rows, "Evaluated.\n", table3=table3)
    assert "Table 3" in index.read_text()
    assert "6 players and 10 pictures loaded, 0 failed" in check_page(index)
