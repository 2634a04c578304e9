"""Data parallelism for real: `torchrun` with 2 processes (gloo, CPU) against one process, same global
batch and seed. The losses and the final weights must agree to float tolerance, each checkpoint is
written by rank 0 alone, and a resume under torchrun (or with another N) continues the same run.
Also: gradient accumulation equals the whole batch, and the training stages read audio lazily."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import toy
import train
import train_codec
import train_lm

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_worker.py"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    toy.make_toy_dataset(folder, n=12, seed=0)
    return folder


@pytest.fixture(scope="module")
def codec_run(dataset, tmp_path_factory):
    """A codec trained for 2 steps, which the LM runs below share."""
    out = tmp_path_factory.mktemp("codec")
    worker("codec", dataset, out, steps=2)
    return out


def worker(stage, data_dir, out, nproc=1, steps=3, **options):
    command = [sys.executable, str(WORKER)] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), str(WORKER)]
    command += [stage, str(data_dir), str(out), "--steps", str(steps)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((Path(out) / f"losses_{stage}.json").read_text())


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=atol), name


def fresh_lm_dir(codec_run, tmp_path, name):
    out = tmp_path / name
    out.mkdir()
    shutil.copy(codec_run / "codec.pt", out / "codec.pt")
    return out


@pytest.mark.slow
def test_codec_on_two_processes_is_the_one_process_run(dataset, tmp_path):
    """Crops from the shared plan, gradients averaged by DDP, the RVQ's EMA statistics and dead-code
    revivals (many: 256 codes, 48 vectors a step) all-reduced: weights and codebooks as one process's."""
    one, two = tmp_path / "one", tmp_path / "two"
    losses_one = worker("codec", dataset, one, steps=4)
    losses_two = worker("codec", dataset, two, nproc=2, steps=4)
    assert losses_two == pytest.approx(losses_one, abs=1e-5)
    # Summing in another order rounds differently, and Adam's first steps (update ≈ lr · sign of the
    # gradient) amplify that to ~5e-5 in the weights (as micro-batches in one process do) and ~1e-3 in the
    # codebooks, which average the encoder's outputs. A codebook not synced is off by ~1, a weight by ~lr.
    one_weights, two_weights = weights(one / "codec.pt"), weights(two / "codec.pt")
    codebooks = [name for name in one_weights if name.startswith("quantizer.")]
    assert len(codebooks) == 4 * 4  # K levels × (initialized, codebook, cluster_size, embed_sum)
    assert_same_weights({k: v for k, v in one_weights.items() if k not in codebooks},
                        {k: v for k, v in two_weights.items() if k not in codebooks}, atol=2e-4)
    assert_same_weights({k: one_weights[k] for k in codebooks}, {k: two_weights[k] for k in codebooks}, atol=1e-2)
    assert json.loads((two / "saves_codec_rank1.json").read_text()) == []  # rank 0 alone writes
    assert json.loads((two / "saves_codec_rank0.json").read_text())


@pytest.mark.slow
def test_lm_on_two_processes_is_the_one_process_run(codec_run, dataset, tmp_path):
    one, two = fresh_lm_dir(codec_run, tmp_path, "one"), fresh_lm_dir(codec_run, tmp_path, "two")
    losses_one = worker("lm", dataset, one, steps=3)
    losses_two = worker("lm", dataset, two, nproc=2, steps=3)
    assert losses_two == pytest.approx(losses_one, abs=1e-5)
    assert losses_one[-1] < losses_one[0]  # it trains: the comparison is not between two idle runs
    assert_same_weights(weights(one / "lm.pt"), weights(two / "lm.pt"))
    assert json.loads((two / "saves_lm_rank1.json").read_text()) == []
    assert json.loads((two / "saves_lm_rank0.json").read_text())
    # The codes were encoded by both processes (sharded), into the same arrays one process writes.
    for split in ("train", "heldout"):
        assert (data.open_codes(one / "codes", split)[0] == data.open_codes(two / "codes", split)[0]).all()


@pytest.mark.slow
def test_resume_under_torchrun_and_with_another_process_count(codec_run, dataset, tmp_path):
    straight = worker("lm", dataset, fresh_lm_dir(codec_run, tmp_path, "straight"), steps=4)
    out = fresh_lm_dir(codec_run, tmp_path, "resumed")
    worker("lm", dataset, out, nproc=2, steps=4, interrupt_at=2)  # Ctrl-C after step 2: rank 0 saves
    assert torch.load(out / "lm.pt", weights_only=True)["step"] == 2
    resumed = worker("lm", dataset, out, nproc=2, steps=4, resume=True, interrupt_at=3)  # torchrun again: step 3
    assert torch.load(out / "lm.pt", weights_only=True)["step"] == 3
    assert resumed == pytest.approx(straight[2:3], abs=1e-5)
    resumed = worker("lm", dataset, out, nproc=1, steps=4, resume=True)  # one process now: step 4
    assert resumed == pytest.approx(straight[3:4], abs=1e-5)
    assert_same_weights(weights(out / "lm.pt"), weights(tmp_path / "straight" / "lm.pt"))


@pytest.mark.slow
def test_micro_batches_accumulate_to_the_whole_batch(codec_run, dataset, tmp_path):
    whole = worker("lm", dataset, fresh_lm_dir(codec_run, tmp_path, "whole"), steps=2)
    pieces = worker("lm", dataset, fresh_lm_dir(codec_run, tmp_path, "pieces"), steps=2, micro_batch=1, workers=1)
    assert pieces == pytest.approx(whole, abs=1e-5)


@pytest.mark.slow
def test_training_reads_only_the_windows_it_uses(tmp_path, monkeypatch):
    """A manifest of 100 clips: the codec stage reads each step's crops (and the validation clips), not
    every file up front; the LM stage reads each clip once to encode it, then windows only."""
    toy.make_toy_dataset(tmp_path, n=4, seed=0)
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines * 25) + "\n")  # 100 entries, 4 files
    reads = {"window": 0, "whole": 0}
    read_window, load_audio = data.read_window, train_codec.load_audio

    def counted_window(*args):
        reads["window"] += 1
        return read_window(*args)

    def counted_whole(*args):
        reads["whole"] += 1
        return load_audio(*args)
    monkeypatch.setattr(data, "read_window", counted_window)
    monkeypatch.setattr(train_codec, "load_audio", counted_whole)
    monkeypatch.setattr(train_lm, "load_audio", counted_whole)
    preset = train.replace(train.TINY, codec_batch=2, lm_batch=2, codec_quantizer_warmup=0.0)
    train_codec.train_codec(tmp_path / "run", tmp_path, preset, max_steps=2, eval_every=1000, n_valid=2)
    assert reads == {"window": 64 + 2 * 2, "whole": 2}  # k-means on 64 crops, two steps of two
    reads.update(window=0, whole=0)
    train_lm.train_lm(tmp_path / "run", tmp_path, preset, max_steps=2, eval_every=1000, n_valid=2)
    assert reads["whole"] == 100  # the encoding, once
    assert reads["window"] == 2 * 2 + 2  # two steps of two windows, two validation windows
    reads.update(window=0, whole=0)
    train_lm.train_lm(tmp_path / "run", tmp_path, preset, max_steps=2, eval_every=1000, n_valid=2)
    assert reads["whole"] == 0  # the codes on disk are reused
