"""train.py and generate.py end to end on a micro dataset: train → generate → decode, exact resume,
and every bad-input case of generate.py (one line on stderr, exit code 2)."""
import subprocess
import sys
from dataclasses import replace
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


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    toy.make_toy_dataset(folder, n=20, seed=0)
    return folder


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory):
    """A whole `python train.py` (both stages + samples) with a handful of steps."""
    out = tmp_path_factory.mktemp("run")
    train.main(["--data", str(dataset), "--out", str(out), "--max-steps", "2", "--batch-size", "2",
                "--device", "cpu"])
    return out


def test_train_writes_checkpoints_and_samples(run):
    assert (run / "codec.pt").is_file() and (run / "lm.pt").is_file()
    wav, rate = sf.read(run / "samples" / "text_0.wav")
    assert rate == 16000 and len(wav) == 4 * 16000  # the training window, whole frames
    assert (run / "samples" / "melody.wav").is_file() and (run / "samples" / "continuation.wav").is_file()
    assert len(list((run / "codec_samples").glob("*_reconstruction.wav"))) >= 1
    for path in list((run / "samples").glob("*.wav")) + list((run / "codec_samples").glob("*.wav")):
        assert abs(sf.read(path)[0]).max() < 0.999, f"{path.name} hard-clips"  # levelled, never clipped


def generate(*args):
    return subprocess.run([sys.executable, str(ROOT / "generate.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def test_generate_writes_a_wav_of_the_requested_length(run, tmp_path):
    out = tmp_path / "x.wav"
    result = generate("--run", run, "--text", "slow sad strings", "--text", "xylophonic banjo", "--duration", 1.0,
                      "--out", out)
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "xylophonic" in result.stderr  # unknown words: warned, not fatal
    for i in range(2):
        wav, rate = sf.read(tmp_path / f"x_{i}.wav")
        assert rate == 16000 and len(wav) == 16000


def test_continuation_drops_the_prompt_frames_that_saw_the_cut(run, dataset, monkeypatch):
    """The encoder looks `lookahead_frames` ahead, so a cut prompt's last frames are encoded as if the music
    stopped there. generate_continuation must hand the LM only the frames the cut did not touch: exactly
    the uncut clip's codes of those frames."""
    from musicgen import MusicGen
    model = MusicGen.load(run)
    clip = data.load_clips(dataset, model.sample_rate)[0].wav[None]  # (1, 1, N)
    n_frames = 30
    given = {}
    monkeypatch.setattr(model, "_generate", lambda descriptions, prompt=None, **kw: given.update(prompt=prompt))
    model.generate_continuation(clip[..., :n_frames * model.codec.hop_length], model.sample_rate, ["a tune"])
    kept = n_frames - model.codec.lookahead_frames
    assert given["prompt"].shape == (1, model.codec.n_q, kept)
    assert torch.equal(given["prompt"], model.codec.encode(clip)[..., :kept])
    # The paper's behaviour, one switch away: every prompt frame is kept.
    model.lm.cfg.trim_prompt_lookahead = False
    model.generate_continuation(clip[..., :n_frames * model.codec.hop_length], model.sample_rate, ["a tune"])
    assert torch.equal(given["prompt"], model.codec.encode(clip[..., :n_frames * model.codec.hop_length]))
    assert given["prompt"].shape[-1] == n_frames
    model.lm.cfg.trim_prompt_lookahead = True
    with pytest.raises(ValueError, match="prompt is shorter"):
        model.generate_continuation(clip[..., :model.codec.lookahead_frames * model.codec.hop_length],
                                    model.sample_rate)


def test_generate_with_melody_and_prompt(run, tmp_path, dataset):
    clip = sorted(dataset.glob("**/*.wav"))[0]
    wav, rate = sf.read(clip, dtype="float32")
    sf.write(tmp_path / "start.wav", wav[:rate // 2], rate)  # a 0.5 s prompt, continued to 1 s
    for flag, audio in (("--melody", clip), ("--prompt", tmp_path / "start.wav")):
        result = generate("--run", run, flag, audio, "--duration", 1.0, "--out", tmp_path / "y.wav")
        assert result.returncode == 0, result.stderr
        assert sf.info(tmp_path / "y.wav").frames == 16000
    out, _ = sf.read(tmp_path / "y.wav", dtype="float32")
    assert np.abs(out[:rate // 2]).max() > 0  # the prompt's half second is there (re-encoded by the codec)
    # In-process, the codes the codec decodes: a continuation starts with the prompt's own codes, and the
    # melody reaches the LM (the same seed without it gives other codes).
    from musicgen import MusicGen
    model = MusicGen.load(run)
    model.set_generation_params(duration=1.0)
    decoded = []
    decode = model.codec.decode
    model.codec.decode = lambda codes: decoded.append(codes) or decode(codes)
    prompt = torch.from_numpy(wav[:rate // 2])[None, None]
    model.generate_continuation(prompt, rate, ["a tune"])
    kept = (rate // 2) // model.codec.hop_length - model.prompt_lookahead_frames
    assert kept > 0 and torch.equal(decoded[-1][..., :kept], model.codec.encode(prompt)[..., :kept])
    melody = torch.from_numpy(wav)[None, None]
    for with_melody in (True, False):
        torch.manual_seed(3)
        model.generate_with_chroma(["a tune"], melody if with_melody else 0 * melody, rate)
    assert not torch.equal(decoded[-2], decoded[-1])


@pytest.mark.parametrize("case", ["missing run", "corrupt run", "empty text", "negative duration",
                                  "absurd duration", "missing melody", "corrupt melody", "short melody",
                                  "short prompt"])
def test_generate_bad_input_exits_2_with_one_line(case, run, tmp_path):
    args = ["--run", run, "--text", "a tune", "--duration", 1.0, "--out", tmp_path / "z.wav"]
    if case == "missing run":
        args[1] = tmp_path / "nowhere"
    elif case == "corrupt run":
        bad = tmp_path / "bad_run"
        bad.mkdir()
        (bad / "codec.pt").write_bytes(b"garbage")
        (bad / "lm.pt").write_bytes(b"garbage")
        args[1] = bad
    elif case == "empty text":
        args[3] = "  "
    elif case == "negative duration":
        args[5] = -1
    elif case == "absurd duration":
        args[5] = 1e6
    elif case == "missing melody":
        args += ["--melody", tmp_path / "none.wav"]
    elif case == "corrupt melody":
        (tmp_path / "corrupt.wav").write_bytes(b"RIFF not really")
        args += ["--melody", tmp_path / "corrupt.wav"]
    elif case == "short melody":
        sf.write(tmp_path / "short.wav", np.zeros(10, dtype=np.float32), 16000)
        args += ["--melody", tmp_path / "short.wav"]
    elif case == "short prompt":  # 0.1 s: shorter than the encoder's look-ahead plus one frame
        sf.write(tmp_path / "short_prompt.wav", np.zeros(1600, dtype=np.float32), 16000)
        args += ["--prompt", tmp_path / "short_prompt.wav"]
    result = generate(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.stderr


class InterruptAt:
    """A tqdm stand-in that raises KeyboardInterrupt (as Ctrl-C would) once `at` steps are done."""

    def __init__(self, at):
        self.at = at

    def write(self, message):
        print(message)

    def __call__(self, *args, total=None, initial=0, **kwargs):
        if args:  # tqdm(iterable): just the iterable
            return args[0]
        stop_at = self.at

        class Bar:
            n = initial

            def update(self, k):
                self.n += k
                if stop_at is not None and self.n >= stop_at:
                    raise KeyboardInterrupt

            def set_postfix(self, **kw):
                pass

            def close(self):
                pass

        return Bar()


def test_lm_resume_continues_exactly(run, dataset, tmp_path, monkeypatch):
    """Interrupted after 2 of 4 steps, then resumed = 4 uninterrupted steps: same losses, same weights."""
    import lm as lm_module
    losses = []
    original = lm_module.LMModel.compute_loss

    def logged(self, *args, **kwargs):
        loss, per_codebook = original(self, *args, **kwargs)
        if self.training:
            losses.append(loss.item())
        return loss, per_codebook

    monkeypatch.setattr(lm_module.LMModel, "compute_loss", logged)
    preset = train.TINY
    preset = train.replace(preset, lm_batch=2, lm_warmup=1)
    results = {}
    for name, interrupt in (("straight", None), ("resumed", 2)):
        out = tmp_path / name
        out.mkdir()
        (out / "codec.pt").write_bytes((run / "codec.pt").read_bytes())
        losses.clear()
        monkeypatch.setattr(stages, "tqdm", InterruptAt(interrupt))
        if interrupt:
            with pytest.raises(KeyboardInterrupt):
                stages.train_lm(out, dataset, preset, max_steps=4, eval_every=1000)
            monkeypatch.setattr(stages, "tqdm", InterruptAt(None))
            stages.train_lm(out, dataset, preset, max_steps=4, eval_every=1000, resume=True)
        else:
            stages.train_lm(out, dataset, preset, max_steps=4, eval_every=1000)
        results[name] = (list(losses), torch.load(out / "lm.pt", weights_only=True))
    (straight_losses, straight), (resumed_losses, resumed) = results["straight"], results["resumed"]
    assert resumed["step"] == straight["step"] == 4
    assert resumed_losses == pytest.approx(straight_losses, abs=1e-6)
    for name, value in straight["model"].items():
        assert torch.allclose(value, resumed["model"][name], atol=1e-6), name


def test_codec_resume_continues_exactly(dataset, tmp_path, monkeypatch):
    preset = train.replace(train.TINY, codec_batch=2)
    weights = {}
    for name, interrupt in (("straight", None), ("resumed", 2)):
        out = tmp_path / name
        monkeypatch.setattr(stages, "tqdm", InterruptAt(interrupt))
        if interrupt:
            with pytest.raises(KeyboardInterrupt):
                stages.train_codec(out, dataset, preset, max_steps=4, eval_every=1000, n_valid=2)
            monkeypatch.setattr(stages, "tqdm", InterruptAt(None))
            stages.train_codec(out, dataset, preset, max_steps=4, eval_every=1000, n_valid=2, resume=True)
        else:
            stages.train_codec(out, dataset, preset, max_steps=4, eval_every=1000, n_valid=2)
        weights[name] = torch.load(out / "codec.pt", weights_only=True)["model"]
    for name, value in weights["straight"].items():
        assert torch.allclose(value, weights["resumed"][name], atol=1e-6), name


@pytest.mark.parametrize("changes", [dict(adversarial=True, disc_filters=4, disc_scales=(256, 128)),
                                     dict(spectral=False, snake=False, l1_weight=0.1, pitch_weight=0.0,
                                          frequency_weight=0.0)], ids=["adversarial", "seanet"])
def test_the_papers_codec_training_is_one_switch_away(dataset, tmp_path, changes):
    """The tiny recipe turns off the discriminator and swaps SEANet for the spectral codec: each paper
    behaviour is a config switch, and training runs with it (its losses move the weights)."""
    codec_cfg = train.replace(train.TINY_CODEC, n_filters=4, dimension=8, **changes)
    preset = train.replace(train.TINY, codec=codec_cfg, codec_batch=2)
    stages.train_codec(tmp_path, dataset, preset, max_steps=2, eval_every=1000, n_valid=2)
    ckpt = torch.load(tmp_path / "codec.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["config"]["spectral"] == codec_cfg.spectral
    if codec_cfg.adversarial:
        assert "discriminator" in ckpt and "disc_optimizer" in ckpt


def test_the_run_forecasts_its_steps_from_timed_steps(capsys):
    """train.py times a few steps of both models before a long run and says how long the steps will take:
    the steps' count times the timed seconds, the codec's warm-up and quantized phases apart."""
    preset = replace(train.TINY, codec_batch=2, lm_batch=2, codec_steps=200, lm_steps=100)
    timed = train.seconds_per_step(preset, "cpu", steps=1)
    assert all(t > 0 for t in (*timed["codec"], timed["lm"]))
    seconds = train.announce(preset, ["codec", "lm"], dict(codec=(0.3, 0.6), lm=1.2), Path("runs/x"))
    assert seconds == pytest.approx(100 * 0.3 + 100 * 0.6 + 100 * 1.2)  # codec_quantizer_warmup 0.5 of 200
    line = capsys.readouterr().out
    assert "codec 1.5 min (200 steps), lm 2.0 min (100 steps)" in line and "runs/x/codec.pt" in line
    assert train.announce(preset, ["lm"], dict(codec=(0.3, 0.6), lm=1.2), Path("r")) == pytest.approx(120)
