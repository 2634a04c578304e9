"""Data parallelism for real: `torchrun` with 2 processes (gloo, CPU) against one process, same global
batch and seed. The first step's gradients, the losses and the final weights must agree, each checkpoint
is written by rank 0 alone, and a resume under torchrun (or with another N) continues the same run.
Also: gradient accumulation equals the whole batch, and the training stages read audio lazily.

How closely, and why the runs train in float64 (tests/ddp_worker.py). One process sums the gradient of
a batch of 4 clips; two processes sum 2 + 2 and DDP averages the halves: equal in exact arithmetic, not
in floating point. In float32 that one rounding (~1e-7 of a gradient) does not stay small: the codec's
losses have gradients that jump at float32's resolution (L1's sign(a - b) where a ≈ b, the spectral
decoder's phase, a running sum of frequencies), Adam's update g / √v turns an absolute rounding of a
tensor's largest entries into a relative one of its smallest, and k-means flips a nearest-centroid tie:
after 4 codec steps the losses part by 3e-3 on an AVX-512 CPU, an amplification A ≈ 3e-3 / 2^-24 ≈ 5e4.
In float64 the same A times a rounding unit of 2^-53 is ~1e-11. The tolerance is √ε of float64,
2^-26 ≈ 1.5e-8: a thousand times that, whatever the CPU's summation order, and far below the smallest
effect of a DDP fault (a weight moved by the first warm-up lr, 2e-5; a gradient off by a factor 2)."""
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
import stages

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


TOLERANCE = 2.0 ** -26  # √ε of float64 (see above)
LOSS_TOLERANCE = 2.0 ** -23  # the logged losses are rounded to float32: one ulp apart at most


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def gradients(out, stage):
    """The first step's gradients as the optimizer saw them (rank 0; after DDP's averaging)."""
    return torch.load(Path(out) / f"gradients_{stage}.pt", weights_only=True)


def assert_close(a, b, what):
    """Every tensor of a equals b's to TOLERANCE relative to the tensor's largest entry (a state dict or a
    list of tensors); integer and boolean buffers exactly."""
    assert len(a) == len(b), what
    for name, x, y in (zip(a, a.values(), b.values()) if isinstance(a, dict) else zip(range(len(a)), a, b)):
        assert x.shape == y.shape and x.dtype == y.dtype, f"{what}: {name}"
        if not x.is_floating_point():
            assert torch.equal(x, y), f"{what}: {name}"
            continue
        scale = max(x.abs().max().item(), 1e-30)
        assert (x - y).abs().max().item() <= TOLERANCE * scale, f"{what}: {name} differs by " \
            f"{(x - y).abs().max().item() / scale:.1e} of its largest entry"


def assert_same_losses(a, b):
    assert a == pytest.approx(b, rel=LOSS_TOLERANCE, abs=0)


def fresh_lm_dir(codec_run, tmp_path, name):
    out = tmp_path / name
    out.mkdir()
    shutil.copy(codec_run / "codec.pt", out / "codec.pt")
    return out


@pytest.mark.slow
def test_codec_on_two_processes_is_the_one_process_run(dataset, tmp_path):
    """Crops from the shared plan, gradients averaged by DDP, the RVQ's k-means, EMA statistics and
    dead-code revivals (many: 256 codes, 48 vectors a step) all-reduced: weights and codebooks as one
    process's. Steps 0-1 train the autoencoder alone, k-means runs at step 2, steps 2-3 quantize."""
    one, two = tmp_path / "one", tmp_path / "two"
    losses_one = worker("codec", dataset, one, steps=4)
    losses_two = worker("codec", dataset, two, nproc=2, steps=4)
    assert_close(gradients(two, "codec"), gradients(one, "codec"), "the first step's gradients")
    assert_same_losses(losses_two, losses_one)
    one_weights, two_weights = weights(one / "codec.pt"), weights(two / "codec.pt")
    codebooks = [name for name in one_weights if name.startswith("quantizer.")]
    assert len(codebooks) == 4 * 4  # K levels × (initialized, codebook, cluster_size, embed_sum)
    assert all(one_weights[name].all() for name in codebooks if name.endswith("initialized"))
    assert_close(two_weights, one_weights, "the weights and codebooks after 4 steps")
    assert json.loads((two / "saves_codec_rank1.json").read_text()) == []  # rank 0 alone writes
    assert json.loads((two / "saves_codec_rank0.json").read_text())


@pytest.mark.slow
def test_lm_on_two_processes_is_the_one_process_run(codec_run, dataset, tmp_path):
    one, two = fresh_lm_dir(codec_run, tmp_path, "one"), fresh_lm_dir(codec_run, tmp_path, "two")
    losses_one = worker("lm", dataset, one, steps=3)
    losses_two = worker("lm", dataset, two, nproc=2, steps=3)
    assert_close(gradients(two, "lm"), gradients(one, "lm"), "the first step's gradients")
    assert_same_losses(losses_two, losses_one)
    assert losses_one[-1] < losses_one[0]  # it trains: the comparison is not between two idle runs
    assert_close(weights(two / "lm.pt"), weights(one / "lm.pt"), "the weights after 3 steps")
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
    assert_same_losses(resumed, straight[2:3])
    resumed = worker("lm", dataset, out, nproc=1, steps=4, resume=True)  # one process now: step 4
    assert_same_losses(resumed, straight[3:4])
    assert_close(weights(out / "lm.pt"), weights(tmp_path / "straight" / "lm.pt"), "the resumed run's weights")


@pytest.mark.slow
def test_micro_batches_accumulate_to_the_whole_batch(codec_run, dataset, tmp_path):
    whole_dir, pieces_dir = fresh_lm_dir(codec_run, tmp_path, "whole"), fresh_lm_dir(codec_run, tmp_path, "pieces")
    whole = worker("lm", dataset, whole_dir, steps=2)
    pieces = worker("lm", dataset, pieces_dir, steps=2, micro_batch=1, workers=1)
    assert_close(gradients(pieces_dir, "lm"), gradients(whole_dir, "lm"), "the first step's gradients")
    assert_same_losses(pieces, whole)
    assert_close(weights(pieces_dir / "lm.pt"), weights(whole_dir / "lm.pt"), "the weights after 2 steps")


@pytest.mark.slow
def test_training_reads_only_the_windows_it_uses(tmp_path, monkeypatch):
    """A manifest of 100 clips: the codec stage reads each step's crops (and the validation clips), not
    every file up front; the LM stage reads each clip once to encode it, then windows only."""
    toy.make_toy_dataset(tmp_path, n=4, seed=0)
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines * 25) + "\n")  # 100 entries, 4 files
    reads = {"window": 0, "whole": 0}
    read_window, load_audio = data.read_window, stages.load_audio

    def counted_window(*args):
        reads["window"] += 1
        return read_window(*args)

    def counted_whole(*args):
        reads["whole"] += 1
        return load_audio(*args)
    monkeypatch.setattr(data, "read_window", counted_window)
    monkeypatch.setattr(stages, "load_audio", counted_whole)
    monkeypatch.setattr(stages, "load_audio", counted_whole)
    preset = train.replace(train.TINY, codec_batch=2, lm_batch=2, codec_quantizer_warmup=0.0)
    stages.train_codec(tmp_path / "run", tmp_path, preset, max_steps=2, eval_every=1000, n_valid=2)
    assert reads == {"window": 64 + 2 * 2, "whole": 2}  # k-means on 64 crops, two steps of two
    reads.update(window=0, whole=0)
    stages.train_lm(tmp_path / "run", tmp_path, preset, max_steps=2, eval_every=1000, n_valid=2)
    assert reads["whole"] == 100  # the encoding, once
    assert reads["window"] == 2 * 2 + 2  # two steps of two windows, two validation windows
    reads.update(window=0, whole=0)
    stages.train_lm(tmp_path / "run", tmp_path, preset, max_steps=2, eval_every=1000, n_valid=2)
    assert reads["whole"] == 0  # the codes on disk are reused
