"""Fine-tuning a published MusicGen (`train.py --init-from FOLDER`, published/finetune.py) end to end.

The published model is a tiny random HF MusicGen in the published layout (test_musicgen_hf.tiny_reference:
8 kHz, hop 4, so 2000 frames a second; K = 4 codebooks of 32), the user's folder a few toy clips.
A short fine-tune (full or LoRA) must lower the loss on clips it did not train on, resume exactly,
save a run that MusicGen.load and generate.py read (adapters alone, beside a checksummed pointer to
the base), and refuse a base folder that moved or changed in one line with exit code 2.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import lora
import toy
import train
from conditioners import text_tokens
from musicgen import MusicGen
from published.finetune import FinetuneError

transformers = pytest.importorskip("transformers")
import test_musicgen_melody_hf as melody  # noqa: E402
from test_musicgen_hf import save, tiny_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WINDOW = "--lm.window_seconds=0.05"  # 100 frames of the tiny codec (the published 30 s, scaled down)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save(tiny_reference(), tmp_path_factory, "base")


@pytest.fixture(scope="module")
def stereo_base(tmp_path_factory):
    return save(tiny_reference(channels=2), tmp_path_factory, "stereo_base")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """30 toy clips cut to 0.2 s (400 frames of the tiny codec), a few of them held out."""
    folder = tmp_path_factory.mktemp("mine")
    toy.make_toy_dataset(folder, n=30, seed=0, duration=0.2)
    return folder


def finetune(base, folder, out, *flags, steps=30, lr=3e-3):
    train.main(["--init-from", str(base), "--data", str(folder), "--out", str(out), "--max-steps", str(steps),
                "--batch-size", "4", "--lr", str(lr), "--eval-every", "1000", "--device", "cpu", WINDOW, *flags])


def heldout_loss(run_or_model, folder):
    """The plain cross-entropy of the model on the held-out clips' first windows (their codes by the base's
    codec), with their descriptions: what the fine-tune never trained on."""
    model = run_or_model if isinstance(run_or_model, MusicGen) else MusicGen.load(run_or_model)
    clips = data.load_clips(folder, model.sample_rate, split="heldout")
    assert len(clips) >= 3
    window = model.lm.cfg.window_frames
    wav = torch.stack([c.wav[:, :window * model.codec.hop_length] for c in clips])  # (B, 1, N)
    with torch.no_grad():
        codes = model.codec.encode(wav)
        ids, mask = model.tokenizer.encode([c.description for c in clips])
        text, text_mask = model.lm.encode_text(ids, mask)
        return model.lm.compute_loss(codes, text, text_mask, None)[1].mean().item()


@pytest.fixture(scope="module")
def lora_run(base, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    finetune(base, folder, out, "--lora-rank", "4", "--lora-alpha", "32", lr=1e-2)
    return out


def test_a_lora_fine_tune_lowers_the_heldout_loss_and_saves_only_adapters(base, folder, lora_run):
    published = MusicGen.from_pretrained(base)
    published.lm.cfg.window_seconds = 0.05  # the same windows as the fine-tune's
    before, after = heldout_loss(published, folder), heldout_loss(lora_run, folder)
    assert after < before - 0.05, (before, after)
    ckpt = torch.load(lora_run / "lm.pt", weights_only=True)
    assert ckpt["lora"] == dict(rank=4, alpha=32.0, targets=list(lora.TARGETS))
    assert ckpt["model"] and all(".lora_A" in k or ".lora_B" in k for k in ckpt["model"])
    assert ckpt["base"]["folder"] == str(base.resolve()) and len(ckpt["base"]["sha256"]) == 64
    assert not (lora_run / "codec.pt").exists()  # the codec is the published one
    assert ckpt["optimizer"] is None and torch.load(lora_run / "optimizer.pt", weights_only=True)["step"] == 30
    # Only the adapters changed: the loaded model without its adapters is the published model.
    trained = sum(t.numel() for t in ckpt["model"].values())
    assert trained < 0.2 * sum(p.numel() for p in published.lm.parameters())


def test_the_null_description_is_no_token_for_t5_too(base):
    """Condition dropout's and guidance's null text is "": T5's tokenizer gives it a </s> token, which
    must be masked, as the word tokenizer gives it none (and the reference masks an empty description)."""
    tokenizer = MusicGen.from_pretrained(base).tokenizer
    ids, mask = tokenizer.encode(["", "a tune"])
    assert mask[0].any()  # T5's </s>
    ids, mask = text_tokens(tokenizer, ["", "a tune"])
    assert not mask[0].any() and mask[1].any()


def test_a_fine_tuned_run_generates_with_generate_py(lora_run, tmp_path):
    out = tmp_path / "x.wav"
    result = subprocess.run([sys.executable, "generate.py", "--run", str(lora_run), "--text", "a happy rock song",
                             "--duration", "0.04", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    wav, rate = sf.read(out)
    assert rate == 8000 and len(wav) == 0.04 * 8000 and abs(wav).max() > 0


def test_the_loaded_run_is_the_base_plus_the_merged_adapters(base, lora_run):
    """MusicGen.load merges the adapters: the same logits as the base with W + (α / r) B A put in by hand."""
    model = MusicGen.load(lora_run)
    ckpt = torch.load(lora_run / "lm.pt", weights_only=True)
    published = MusicGen.from_pretrained(base)
    state = published.lm.state_dict()
    for name in [k for k in ckpt["model"] if k.endswith(".lora_A")]:
        layer = name.removesuffix(".lora_A")
        A, B = ckpt["model"][name], ckpt["model"][layer + ".lora_B"]
        state[layer + ".weight"] = state[layer + ".weight"] + (32.0 / 4) * B @ A
    assert not any(isinstance(m, lora.LoRALinear) for m in model.lm.modules())
    for name, tensor in model.lm.state_dict().items():
        torch.testing.assert_close(tensor, state[name], atol=1e-6, rtol=0)


def test_a_moved_or_changed_base_is_refused_in_one_line(base, folder, lora_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    moved = tmp_path / "base"
    shutil.copytree(base, moved)
    ckpt = torch.load(run / "lm.pt", weights_only=True)
    ckpt["base"]["folder"] = str(moved)
    torch.save(ckpt, run / "lm.pt")
    generate = [sys.executable, "generate.py", "--run", str(run), "--duration", "0.02", "--out", str(tmp_path / "x.wav")]
    assert subprocess.run(generate, capture_output=True, text=True, cwd=ROOT, timeout=120).returncode == 0
    config = json.loads((moved / "config.json").read_text())
    config["decoder"]["dropout"] = 0.5  # a changed file: another model, whatever the change
    (moved / "config.json").write_text(json.dumps(config))
    for broken in ("changed", "gone"):
        if broken == "gone":
            shutil.rmtree(moved)
        result = subprocess.run(generate, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert str(moved) in result.stderr and ("changed" if broken == "changed" else "gone") in result.stderr
    with pytest.raises(FinetuneError, match="gone"):
        MusicGen.load(run)


def test_a_fine_tune_resumes_exactly(base, folder, tmp_path):
    """6 steps at once, or 3 then --resume 3 more: the same trained tensors, bit for bit (full fine-tuning,
    dropout on, so the resumed run must also replay the dropout draws)."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    finetune(base, folder, whole, "--lm.dropout=0.1", steps=6)
    finetune(base, folder, split, "--lm.dropout=0.1", steps=3)
    finetune(base, folder, split, "--lm.dropout=0.1", "--resume", steps=6)
    a, b = (torch.load(run / "lm.pt", weights_only=True) for run in (whole, split))
    assert a["step"] == b["step"] == 6 and a["lora"] is None
    assert set(a["model"]) == set(b["model"]) and not any(k.startswith("text_encoder.t5.") for k in a["model"])
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_resuming_another_kind_of_fine_tune_is_refused_before_any_work(base, folder, tmp_path, capsys):
    out = tmp_path / "full"
    finetune(base, folder, out, steps=2)
    capsys.readouterr()
    states = torch.load(out / "optimizer.pt", weights_only=True)
    for flags, message in ((["--lora-rank", "2"], "fine-tuned with LoRA None"), ([], "of step 1, lm.pt of step 2"),
                           ([], "no optimizer.pt")):
        if message.startswith("of step"):  # a save interrupted between its two files
            torch.save(dict(states, step=1), out / "optimizer.pt")
        if message.startswith("no optimizer"):  # a --merge'd run
            (out / "optimizer.pt").unlink()
        with pytest.raises(SystemExit) as exit_info:
            finetune(base, folder, out, "--resume", *flags, steps=4)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert torch.load(out / "lm.pt", weights_only=True)["step"] == 2


def test_merge_saves_the_merged_weights(base, folder, tmp_path):
    out = tmp_path / "merged"
    finetune(base, folder, out, "--lora-rank", "2", "--lora-alpha", "8", "--merge", steps=3)
    ckpt = torch.load(out / "lm.pt", weights_only=True)
    assert ckpt["lora"] is None and not (out / "optimizer.pt").exists()
    assert "transformer.blocks.0.ffn.0.weight" in ckpt["model"]
    model = MusicGen.load(out)
    torch.testing.assert_close(model.lm.state_dict()["transformer.blocks.0.ffn.0.weight"],
                               ckpt["model"]["transformer.blocks.0.ffn.0.weight"])


def test_a_stereo_model_fine_tunes_and_generates_stereo(stereo_base, folder, tmp_path):
    out = tmp_path / "stereo"
    finetune(stereo_base, folder, out, "--lora-rank", "2", steps=3)
    codes = torch.from_numpy(np.load(out / "codes" / "train.npy", mmap_mode="r")[:, :5].copy())
    assert codes.shape[0] == 8  # 2 channels × K = 4, level by level
    model = MusicGen.load(out)
    model.set_generation_params(duration=0.01)
    assert model.generate(["a tune"]).shape == (1, 2, 80)


@pytest.mark.parametrize("flags, message", [
    (["--lm.dim=32"], "keeps the published model's shapes"),
    (["--codec.n_q=8"], "the codec is the published one"),
    (["--lora-rank", "-1"], "--lora-rank must be at least 1"),
    (["--merge"], "need --lora-rank"),
    (["--lora-rank", "2", "--lora-targets", "self_attention.to_v"], "is not a projection"),
    (["--stage", "codec"], "leave out --stage codec"),
    (["--lm.window_seconds=60"], "at least 60 s long"),
])
def test_bad_fine_tune_flags_are_refused_before_any_work(base, folder, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--init-from", str(base), "--data", str(folder), "--out", str(tmp_path / "x"), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x" / "lm.pt").exists()


def test_lora_flags_without_a_base_and_a_missing_base_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/toy here, whether or not the checkout has built one
    for argv, message in ((["--lora-rank", "4"], "add --init-from"),
                          (["--init-from", str(tmp_path), "--data", "data/toy"], "needs --data DIR"),
                          (["--init-from", str(tmp_path / "nothing"), "--data", str(tmp_path)], "config.json: missing")):
        with pytest.raises(SystemExit) as exit_info:
            train.main(argv + ["--out", str(tmp_path / "x")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_melody_model_fine_tunes_with_lora_and_follows_a_melody(tmp_path_factory, folder, tmp_path):
    """musicgen-melody has no cross-attention: the default LoRA targets skip it; its chroma trains along."""
    _, base = melody.save_melody(tmp_path_factory)
    out = tmp_path / "melody"
    finetune(base, folder, out, "--lora-rank", "2", steps=3)
    ckpt = torch.load(out / "lm.pt", weights_only=True)
    assert not any("cross_attention" in t for t in ckpt["lora"]["targets"]) and ckpt["lora"]["targets"]
    model = MusicGen.load(out)
    model.set_generation_params(duration=0.02)
    assert model.generate_with_chroma(["a tune"], melody.two_notes(0.5)[0], melody.SAMPLE_RATE).shape == (1, 1, 160)


def test_checkpointed_activations_train_the_same_weights(base, folder, tmp_path):
    """--checkpoint-activations recomputes each block in backward (dropout masks replayed): the same run."""
    runs = [tmp_path / "plain", tmp_path / "checkpointed"]
    finetune(base, folder, runs[0], "--lm.dropout=0.1", steps=3)
    finetune(base, folder, runs[1], "--lm.dropout=0.1", "--checkpoint-activations", steps=3)
    a, b = (torch.load(run / "lm.pt", weights_only=True)["model"] for run in runs)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0)
    assert not torch.equal(a["heads.0.weight"], MusicGen.from_pretrained(base).lm.state_dict()["heads.0.weight"])
