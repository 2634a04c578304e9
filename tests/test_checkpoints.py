"""Checkpoints: both stages round-trip exactly, and a broken or mismatched file gives the intended
one-line error (in Python and through generate.py, exit code 2), never a traceback."""
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conditioners import Tokenizer
from lm import LMModel, load_lm, save_lm
from musicgen import MusicGen
from encodec import EncodecModel, load_codec
from train import TINY_CODEC, TINY_LM
from stages import lm_config_for

ROOT = Path(__file__).resolve().parents[1]
MICRO_CODEC = replace(TINY_CODEC, n_filters=4, dimension=8, codebook_size=16, ratios=(8, 5, 4, 4))


def micro_run(folder, codebook_size=16):
    """A valid run directory (untrained codec + LM) written by the project's own save functions."""
    torch.manual_seed(0)
    codec = EncodecModel(replace(MICRO_CODEC, codebook_size=codebook_size)).eval()
    tokenizer = Tokenizer.build(["a sad slow tune"])
    lm = LMModel(lm_config_for(EncodecModel(MICRO_CODEC), replace(TINY_LM, dim=32, n_layers=1, n_heads=2, ffn_dim=64,
                                                                 text_dim=16, text_layers=1, text_heads=2,
                                                                 text_vocab_size=len(tokenizer.vocab))))
    folder.mkdir(parents=True, exist_ok=True)
    codec.save(folder / "codec.pt")
    save_lm(folder / "lm.pt", lm, tokenizer, step=7)
    return codec, lm, tokenizer


def test_both_checkpoints_round_trip_exactly(tmp_path):
    codec, lm, tokenizer = micro_run(tmp_path)
    loaded_lm, loaded_tokenizer, ckpt = load_lm(tmp_path / "lm.pt")
    assert ckpt["step"] == 7 and loaded_tokenizer.vocab == tokenizer.vocab and loaded_lm.cfg == lm.cfg
    for name, value in lm.state_dict().items():
        assert torch.equal(value, loaded_lm.state_dict()[name]), name
    loaded_codec, _ = load_codec(tmp_path / "codec.pt")
    wav = torch.randn(1, 1, 3200)
    assert torch.equal(codec.encode(wav), loaded_codec.encode(wav))
    model = MusicGen.load(tmp_path)
    model.set_generation_params(duration=0.2)
    torch.manual_seed(1)
    first = model.generate(["a sad tune"])
    torch.manual_seed(1)
    assert torch.equal(first, model.generate(["a sad tune"]))  # same seed, same audio


def generate(run):
    return subprocess.run([sys.executable, str(ROOT / "generate.py"), "--run", str(run), "--text", "a tune",
                           "--duration", "0.2", "--out", str(run / "x.wav")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_a_truncated_lm_beside_a_valid_codec_names_the_lm(tmp_path):
    micro_run(tmp_path)
    data = (tmp_path / "lm.pt").read_bytes()
    (tmp_path / "lm.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"lm\.pt: not a readable LM checkpoint"):
        MusicGen.load(tmp_path)
    result = generate(tmp_path)
    assert result.returncode == 2 and "lm.pt" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.wav").exists()


def test_a_codec_and_lm_that_disagree_are_refused(tmp_path):
    micro_run(tmp_path, codebook_size=32)  # the LM was built for 16 codes per codebook
    with pytest.raises(ValueError, match="disagree on codebook_size: 16 vs 32"):
        MusicGen.load(tmp_path)
    result = generate(tmp_path)
    assert result.returncode == 2 and "disagree on codebook_size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("dtype, cast", [(torch.bfloat16, "lm.to"), (torch.float16, "lm.to"),
                                         (torch.bfloat16, "load"), (torch.bfloat16, "MusicGen.to")])
def test_a_half_precision_lm_generates_through_the_public_api(tmp_path, dtype, cast):
    """The LM cast to bfloat16 / float16 however the user asks (the LM alone, `MusicGen.load(dtype=)`,
    `MusicGen.to(dtype=)`) generates by text, melody and continuation without any hand-casting and
    returns float32 audio; the codec and the chroma's filters stay float32 (their STFTs need it), so the
    chroma is exactly the float32 model's."""
    micro_run(tmp_path)
    reference_chroma = MusicGen.load(tmp_path).lm.chroma
    if cast == "load":
        model = MusicGen.load(tmp_path, dtype=dtype)
    elif cast == "MusicGen.to":
        model = MusicGen.load(tmp_path).to(dtype=dtype)
    else:
        model = MusicGen.load(tmp_path)
        model.lm.to(dtype)
    assert next(model.lm.transformer.parameters()).dtype == dtype
    assert next(model.codec.parameters()).dtype == torch.float32
    model.set_generation_params(duration=0.3)
    torch.manual_seed(0)
    outputs = [model.generate(["a sad tune"]),
               model.generate_with_chroma(["a sad tune"], torch.randn(1, 1, 16000), 16000),
               model.generate_continuation(0.1 * torch.randn(1, 1, 8000), 16000, ["a tune"])]
    for wav in outputs:
        assert wav.dtype == torch.float32 and wav.shape[-1] > 0 and torch.isfinite(wav).all()
    melody = torch.randn(1, 1, 16000, generator=torch.Generator().manual_seed(0))
    model.lm.chroma.argmax = reference_chroma.argmax = False  # the raw chroma shows a rounded filter
    assert model.lm.chroma(melody).dtype == torch.float32
    assert torch.equal(model.lm.chroma(melody), reference_chroma(melody))


def test_an_lm_checkpoint_with_the_former_stacked_tables_and_heads_still_loads(tmp_path):
    """Runs written before the K embedding tables and K heads were modules of their own (one
    `embeddings.weight`, one `heads.weight`): load_lm splits them, and the LM computes the same logits."""
    import lm as lm_module
    from conditioners import Tokenizer
    cfg = lm_module.LMConfig(n_q=4, codebook_size=16, dim=32, n_layers=1, n_heads=2, ffn_dim=64,
                             window_seconds=1.0, text_encoder="scratch", text_vocab_size=8, text_dim=16,
                             text_layers=1, text_heads=2, input_codebooks=2, sample_rate=16000,
                             chroma_n_fft=2048, chroma_hop_length=512)
    lm = lm_module.LMModel(cfg).eval()
    tokenizer = Tokenizer.build(["a tune"])
    lm_module.save_lm(tmp_path / "lm.pt", lm, tokenizer)
    ckpt = torch.load(tmp_path / "lm.pt", weights_only=True)
    state = ckpt["model"]
    state["embeddings.weight"] = torch.cat([state.pop(f"embeddings.{k}.weight") for k in range(2)])
    state["heads.weight"] = torch.cat([state.pop(f"heads.{k}.weight") for k in range(4)])
    torch.save(ckpt, tmp_path / "old.pt")
    old, _, _ = lm_module.load_lm(tmp_path / "old.pt")
    sequence = torch.randint(0, 17, (1, 4, 5))
    text, mask = lm.encode_text(*tokenizer.encode(["a tune"]))
    with torch.no_grad():
        assert torch.equal(old(sequence, old.conditions(text, mask)), lm(sequence, lm.conditions(text, mask)))
