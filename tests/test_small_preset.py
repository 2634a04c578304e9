"""train.SMALL, the paper's MusicGen-small on the paper's 32 kHz EnCodec, builds and trains one step of
each stage on a CPU (it is meant for GPUs: this checks that it runs, not how well).

The data: 4 toy clips synthesised at the paper's 32 kHz and 31 s long, so every clip holds one of the
LM's 30 s windows (stages.train_lm skips shorter clips; the default toy clips are 4 s). The seed gives 3
training clips and 1 held-out clip. Batches of 2 codec crops and 1 LM window; the paper's are 64 and 192.

Slow (all of it is in one module fixture): run with `python -m pytest -q -s -m slow tests/test_small_preset.py`;
`-s` shows the seconds and the peak memory it prints.
"""
import math
import resource
import time
from dataclasses import asdict, replace

import pytest
import torch

import toy
import train
import stages
from encodec import EncodecConfig, load_codec
from lm import LMConfig, LMModel

# The held-out clip's description has words the 3 training clips lack: warned, read as <unk>.
pytestmark = pytest.mark.filterwarnings("ignore:unknown word:UserWarning")

D, LAYERS, FFN, K, CARD = 1024, 24, 4096, 4, 2048  # MusicGen-small (§4.1) on 4 codebooks of 2048


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Both stages of train.SMALL for one step each; returns what the tests check, and prints the
    seconds and the peak memory of each stage."""
    data_dir = tmp_path_factory.mktemp("toy31s")
    toy.make_toy_dataset(data_dir, n=4, seed=0, sample_rate=32000, duration=31.0)
    out = tmp_path_factory.mktemp("small")
    preset = replace(train.SMALL, codec_batch=2, lm_batch=1)
    report = {}

    started = time.time()
    report["codec_summary"] = stages.train_codec(out, data_dir, preset, max_steps=1, seed=0, device="cpu")
    report["codec_seconds"], report["codec_peak_gb"] = time.time() - started, peak_rss_gb()

    # Every call of the LM's loss, recorded: (loss, with gradients?, when it started). The training step's
    # call is the one with gradients; the held-out evaluation starts right after its optimizer step.
    calls = []
    compute_loss = LMModel.compute_loss

    def recording(self, *args, **kwargs):
        started = time.time()
        result = compute_loss(self, *args, **kwargs)
        calls.append((result[0].item(), torch.is_grad_enabled(), started))
        return result

    started = time.time()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LMModel, "compute_loss", recording)
        report["lm_summary"] = stages.train_lm(out, data_dir, preset, max_steps=1, seed=0, device="cpu")
    report["lm_seconds"], report["lm_peak_gb"] = time.time() - started, peak_rss_gb()
    report["lm_calls"] = calls
    train_step = next(i for i, call in enumerate(calls) if call[1])
    # From the training loss call to the next one (the evaluation's): forward, backward, clipping, AdamW.
    report["lm_step_seconds"] = calls[train_step + 1][2] - calls[train_step][2]
    report["out"] = out
    print(f"\nsmall preset, one step each on {torch.get_num_threads()} CPU threads: "
          f"codec stage {report['codec_seconds']:.0f} s (peak RSS {report['codec_peak_gb']:.1f} GB), "
          f"LM stage {report['lm_seconds']:.0f} s (one training step {report['lm_step_seconds']:.0f} s; "
          f"peak RSS {report['lm_peak_gb']:.1f} GB)")
    return report


@pytest.mark.slow
def test_small_is_the_paper_but_the_text_encoder():
    """Every value is the paper's default but the text encoder (lm_lr is written out only to say that the
    paper's 300M model used D-Adaptation, which stages.py does not have)."""
    assert train.PRESETS["small"] is train.SMALL
    assert train.SMALL.codec == EncodecConfig()
    assert replace(train.SMALL, lm=LMConfig()) == train.Preset()
    assert train.SMALL.lm == replace(LMConfig(), text_encoder="scratch")
    lm = train.SMALL.lm
    assert (lm.dim, lm.n_layers, lm.n_heads, lm.ffn_dim, lm.window_seconds) == (D, LAYERS, 16, FFN, 30.0)
    assert (lm.text_dim, lm.text_layers, lm.text_heads) == (768, 12, 12)  # T5-base's size, trained from scratch


@pytest.mark.slow
def test_codec_stage_trains_the_32khz_4x2048_codec(small_run):
    codec, ckpt = load_codec(small_run["out"] / "codec.pt")
    assert ckpt["config"] == asdict(EncodecConfig())  # the paper's EnCodec, every field
    assert (codec.sample_rate, codec.n_q, codec.codebook_size, codec.hop_length) == (32000, K, CARD, 640)
    assert codec.frame_rate == 50
    assert ckpt["step"] == 1 and "discriminator" in ckpt  # adversarial, as the paper's
    summary = small_run["codec_summary"]
    assert summary["steps"] == 1 and math.isfinite(summary["mel_distance"]) and math.isfinite(summary["si_snr_db"])


@pytest.mark.slow
def test_lm_stage_takes_one_finite_step_on_30s_windows(small_run):
    assert (small_run["out"] / "lm.pt").is_file()
    train_losses = [loss for loss, grad, _ in small_run["lm_calls"] if grad]
    assert len(train_losses) == 1 and math.isfinite(train_losses[0])
    # An untrained LM is close to chance on each codebook: ln 2048 = 7.62.
    assert abs(train_losses[0] - math.log(CARD)) < 1.5, train_losses
    summary = small_run["lm_summary"]
    assert summary["steps"] == 1 and all(math.isfinite(x) for x in summary["valid_loss_per_codebook"])


@pytest.mark.slow
def test_lm_is_musicgen_small_size(small_run):
    """Decoder blocks without cross-attention: 24 · 12 · D² (+ LayerNorms) = 302M, the paper's "300M"
    (§4.1). The decoder as built (cross-attention on the text, K embeddings and heads, the final norm
    and the melody projection) is 419.6M; the text encoder trained with it adds 85.8M + 768 per word."""
    ckpt = torch.load(small_run["out"] / "lm.pt", map_location="cpu", weights_only=True, mmap=True)
    cfg = LMConfig(**ckpt["config"])
    assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.ffn_dim) == (D, LAYERS, 16, FFN)
    assert (cfg.n_q, cfg.codebook_size, cfg.sample_rate, cfg.frame_rate) == (K, CARD, 32000, 50)
    assert cfg.window_frames == 1500 and cfg.text_encoder == "scratch"
    counts = {"self_ffn": 0, "cross": 0, "other": 0, "text": 0}
    for name, tensor in ckpt["model"].items():
        group = ("text" if name.startswith("text_encoder.") else
                 "cross" if name.startswith("transformer.blocks.") and "cross" in name else
                 "self_ffn" if name.startswith("transformer.blocks.") else "other")
        counts[group] += tensor.numel()
    norms = 2 * D  # weight and bias of one LayerNorm
    assert counts["self_ffn"] == LAYERS * (12 * D * D + 2 * norms) == 302_088_192
    assert counts["cross"] == LAYERS * (4 * D * D + norms) == 100_712_448
    embeddings, heads = K * (CARD + 1) * D, K * CARD * D
    assert counts["other"] == embeddings + heads + norms + (12 * D + D) == 16_796_672  # + final norm, melody
    decoder = counts["self_ffn"] + counts["cross"] + counts["other"]
    assert decoder == 419_597_312
    vocab = len(ckpt["vocab"])
    assert counts["text"] == 85_789_440 + 768 * vocab
    print(f"\nLM parameters: blocks without cross-attention {counts['self_ffn'] / 1e6:.1f}M, cross-attention "
          f"{counts['cross'] / 1e6:.1f}M, embeddings + heads + rest {counts['other'] / 1e6:.1f}M, decoder "
          f"{decoder / 1e6:.1f}M; text encoder {counts['text'] / 1e6:.1f}M ({vocab} words)")
