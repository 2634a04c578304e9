"""Speed benchmarks for the README's measured figures; never part of the test run.

    python benchmark.py --run runs/tiny            # a trained run (python train.py)
    python benchmark.py                            # untrained tiny models: same speed, no run needed
    python benchmark.py --pretrained musicgen-small --seconds 1 --rounds 2   # a published MusicGen

Measures, on whatever machine runs it:
- generation speed with and without the KV cache (pattern steps per second, 10 s of audio, CFG on):
  without the cache every step re-runs the whole prefix, so its cost grows with the position;
- the real-time factor of text-to-audio generation: seconds of compute per second of audio, CFG on,
  batch 1, codec decoding included (< 1 means faster than real time);
- training step times of both stages at the tiny preset's batch shapes.
With --pretrained (a published MusicGen folder, read by pretrained.py) only the cached generation is
timed: the load, decoding steps per second (LM alone, codec decoding subtracted) and the real-time factor.
"""
import argparse
import json
import time

import torch

import train
from train_lm import lm_config_for
from conditioners import Tokenizer
from losses import ReconstructionLoss
from lm import MusicLM
from musicgen import MusicGen
from spectral_codec import build_codec


def untrained_model() -> MusicGen:
    """The tiny preset's codec and LM with random weights: generation speed does not depend on them."""
    preset = train.TINY
    codec = build_codec(preset.codec)
    tokenizer = Tokenizer.build(["a cheerful fast tune on a plucked guitar with drums"])
    return MusicGen(codec, MusicLM(lm_config_for(codec, preset.lm, text_vocab_size=len(tokenizer.vocab))),
                    tokenizer)


def time_generation(model: MusicGen, seconds: float, use_cache: bool) -> float:
    """Seconds to generate `seconds` of audio for one description, CFG on, codec decoding included."""
    model.set_generation_params(duration=seconds)
    model.generation_params["use_cache"] = use_cache
    torch.manual_seed(0)
    began = time.perf_counter()
    model.generate(["a cheerful fast tune on a plucked guitar with drums"])
    return time.perf_counter() - began


def time_cache_speedup(model: MusicGen, seconds: float, rounds: int = 5):
    """Best time of `rounds` with and without the KV cache, measured alternately: on a shared CPU the
    machine's speed drifts, and alternating makes both paths see the same drift."""
    cached, uncached = float("inf"), float("inf")
    for _ in range(rounds):
        cached = min(cached, time_generation(model, seconds, use_cache=True))
        uncached = min(uncached, time_generation(model, seconds, use_cache=False))
    return cached, uncached


def time_training_steps(preset, n_steps: int = 10) -> dict:
    """Seconds per optimizer step of the codec and of the LM (random data of the right shapes)."""
    codec = build_codec(preset.codec).train()
    reconstruction_loss = ReconstructionLoss(preset.codec)
    optimizer = torch.optim.Adam(codec.parameters(), lr=1e-4)
    crop = round(preset.codec_crop_seconds * preset.codec.frame_rate) * preset.codec.hop_length
    wav = 0.3 * torch.randn(preset.codec_batch, 1, crop)

    def codec_step():
        recon, _, commitment = codec(wav)
        loss, _ = reconstruction_loss(wav, recon, commitment)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    lm = MusicLM(lm_config_for(codec, preset.lm, text_vocab_size=100))
    lm_optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-4)
    T, K = lm.cfg.window_frames, lm.cfg.n_q
    codes = torch.randint(0, lm.cfg.codebook_size, (preset.lm_batch, K, T))
    ids, mask = torch.randint(0, 100, (preset.lm_batch, 12)), torch.ones(preset.lm_batch, 12, dtype=torch.bool)
    chroma = torch.zeros(preset.lm_batch, lm.melody_frames, 12)

    def lm_step():
        text, text_mask = lm.encode_text(ids, mask)
        loss, _ = lm.compute_loss(codes, text, text_mask, chroma)
        lm_optimizer.zero_grad()
        loss.backward()
        lm_optimizer.step()

    result = {}
    for name, step in (("codec_step_seconds", codec_step), ("lm_step_seconds", lm_step)):
        step()  # warm-up
        began = time.perf_counter()
        for _ in range(n_steps):
            step()
        result[name] = (time.perf_counter() - began) / n_steps
    return result


def time_pretrained(folder, seconds: float, rounds: int, dtype: str = "float32") -> dict:
    """Load time, then the best of `rounds` generations of `seconds` of audio (CFG on, batch 1), split
    into the LM's decoding steps and the codec's decoding, timed apart on the same codes. On a CPU a
    decoding step reads every weight of the LM once, so bfloat16 (half the bytes) is faster."""
    began = time.perf_counter()
    model = MusicGen.from_pretrained(folder, dtype=getattr(torch, dtype))
    load = time.perf_counter() - began
    steps = round(seconds * model.frame_rate) + model.lm.cfg.n_q - 1  # delay pattern: T + K - 1 steps
    total = min(time_generation(model, seconds, use_cache=True) for _ in range(rounds))
    codes = torch.randint(0, model.codec.codebook_size, (1, model.codec.n_q, round(seconds * model.frame_rate)))
    began = time.perf_counter()
    model.codec.decode(codes)
    decode = time.perf_counter() - began
    return dict(seconds_of_audio=seconds, dtype=dtype, load_seconds=load, generation_seconds=total, codec_decode_seconds=decode,
                decoding_steps_per_second=steps / (total - decode), real_time_factor=total / seconds,
                torch_threads=torch.get_num_threads())


def main(argv=None):
    p = argparse.ArgumentParser(description="Speed benchmarks (KV cache, real-time factor, step times).")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run", help="run directory from train.py (default: untrained tiny models)")
    source.add_argument("--pretrained", metavar="FOLDER", help="a published MusicGen folder: its generation only")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="with --pretrained: the LM's dtype")
    p.add_argument("--seconds", type=float, default=10.0, help="audio to generate (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds, best kept (default 5)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.pretrained:
        result = time_pretrained(args.pretrained, args.seconds, args.rounds, args.dtype)
    else:
        model = MusicGen.load(args.run) if args.run else untrained_model()
        steps = round(args.seconds * model.frame_rate) + model.lm.cfg.n_q - 1  # delay pattern: T + K - 1 steps
        time_generation(model, 1.0, use_cache=True)  # warm-up (first calls allocate)
        cached, uncached = time_cache_speedup(model, args.seconds, args.rounds)
        result = dict(seconds_of_audio=args.seconds, cached_seconds=cached, uncached_seconds=uncached,
                      cached_steps_per_second=steps / cached, uncached_steps_per_second=steps / uncached,
                      kv_cache_speedup=uncached / cached, real_time_factor=cached / args.seconds,
                      torch_threads=torch.get_num_threads())
        result.update(time_training_steps(train.TINY))
    for key, value in result.items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
