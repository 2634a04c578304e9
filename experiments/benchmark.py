"""Speed benchmarks for the README's measured figures; never part of the test run.

    python -m experiments.benchmark --run runs/tiny            # a trained run (python train.py)
    python -m experiments.benchmark                            # untrained tiny models: same speed, no run needed
    python -m experiments.benchmark --pretrained musicgen-small --seconds 1 --rounds 2   # a published MusicGen
    python -m experiments.benchmark --versus --config small --dtype bfloat16   # ours and HF transformers', side by side

Measures, on whatever machine runs it:
- generation speed with and without the KV cache (pattern steps per second, 10 s of audio, CFG on):
  without the cache every step re-runs the whole prefix, so its cost grows with the position;
- the real-time factor of text-to-audio generation: seconds of compute per second of audio, CFG on,
  batch 1, codec decoding included (< 1 means faster than real time);
- training step times of both stages at the tiny preset's batch shapes.
With --pretrained (a published MusicGen folder, read by pretrained.py) only the cached generation is
timed: the load, decoding steps per second (LM alone, codec decoding subtracted) and the real-time factor.
With --versus: our generation and HF transformers' (the reference), at one config with the same random
weights, side by side: steps per second, peak memory, the memory-bandwidth floor, and the codec's decoding.
"""
import argparse
import importlib
import importlib.util
import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import autotune
import train
import transformer
from conditioners import Tokenizer
from encodec import EncodecConfig, EncodecModel
from experiments import manifest_memory
from lm import LMConfig, LMModel
from losses import ReconstructionLoss
from musicgen import MusicGen, generate_codes
from published.pretrained import models_from_hf
from stages import lm_config_for

ROOT = Path(__file__).resolve().parents[1]

# The reference (HF transformers, a test-only dependency), for --versus only; never needed to run our code.
transformers = importlib.import_module("transformers") if importlib.util.find_spec("transformers") else None


def untrained_model() -> MusicGen:
    """The tiny preset's codec and LM with random weights: generation speed does not depend on them."""
    preset = train.TINY
    codec = EncodecModel(preset.codec)
    tokenizer = Tokenizer.build(["a cheerful fast tune on a plucked guitar with drums"])
    return MusicGen(codec, LMModel(lm_config_for(codec, preset.lm, text_vocab_size=len(tokenizer.vocab))),
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
    codec = EncodecModel(preset.codec).train()
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

    lm = LMModel(lm_config_for(codec, preset.lm, text_vocab_size=100))
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


# ---- ours versus the reference (HF transformers), same config, same random weights ---------------
DECODERS = {  # the decoder sizes compared: the tiny preset's LM, and MusicGen-small's (the published config)
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, ffn_dim=512, vocab_size=256),
    "small": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096, vocab_size=2048),
}
TEXT_ENCODERS = {"tiny": dict(d_model=128, d_kv=32, d_ff=512, num_layers=2, num_heads=4),
                 "small": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12)}  # T5-base
CODEC = EncodecConfig()  # the published models' 32 kHz EnCodec, for both sides: K = 4 codebooks at 50 Hz


def ours_alone(config: str, dtype):
    """Ours at `config` with weights of its own (random, no reference needed): the sizes, hence the
    speed and memory, of reference_and_ours' model."""
    torch.manual_seed(0)
    decoder, t5 = DECODERS[config], TEXT_ENCODERS[config]
    codec = EncodecModel(replace(CODEC, codebook_size=decoder["vocab_size"]))
    lm = LMModel(LMConfig(codebook_size=decoder["vocab_size"], dim=decoder["hidden_size"],
                          n_layers=decoder["num_hidden_layers"], n_heads=decoder["num_attention_heads"],
                          ffn_dim=decoder["ffn_dim"], melody_fusion="none", text_vocab_size=32128,
                          text_dim=t5["d_model"], text_layers=t5["num_layers"], text_heads=t5["num_heads"]))
    return codec.eval(), lm.eval().to(dtype)


def reference_model(config: str, dtype):
    """A random HF MusicgenForConditionalGeneration at `config`, with the 32 kHz EnCodec of the published
    models (its codebooks random: HF starts them at zero)."""
    torch.manual_seed(0)
    decoder = DECODERS[config]
    text = transformers.T5Config(vocab_size=32128, feed_forward_proj="relu", **TEXT_ENCODERS[config])
    bandwidth = CODEC.n_q * math.log2(decoder["vocab_size"]) * CODEC.frame_rate / 1000  # kbps: HF derives K from it
    audio = transformers.EncodecConfig(sampling_rate=CODEC.sample_rate, target_bandwidths=[bandwidth],
                                       hidden_size=CODEC.dimension, num_filters=CODEC.n_filters,
                                       upsampling_ratios=list(CODEC.ratios), codebook_size=decoder["vocab_size"],
                                       use_causal_conv=False, use_conv_shortcut=False, normalize=False,
                                       pad_mode="reflect", compress=2, num_lstm_layers=2)
    decoder = transformers.MusicgenDecoderConfig(num_codebooks=CODEC.n_q, pad_token_id=decoder["vocab_size"],
                                                 bos_token_id=decoder["vocab_size"], max_position_embeddings=2048,
                                                 **decoder)
    reference = transformers.MusicgenForConditionalGeneration(
        transformers.MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)).eval()
    with torch.no_grad():
        for layer in reference.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
    return reference.to(dtype)


def reference_and_ours(config: str, dtype):
    """The reference and ours built from its state dict by pretrained.models_from_hf: identical weights.
    Without transformers installed: reference None, and ours alone."""
    if transformers is None:
        return (None, *ours_alone(config, dtype))
    reference = reference_model(config, torch.float32)
    codec, lm = models_from_hf(reference.config.to_dict(), reference.state_dict())
    return reference.to(dtype), codec, lm.to(dtype)


def generation(reference, lm, seconds: float) -> dict:
    """{side: a call generating `seconds` of codes}: batch 1, guidance 3, top-k 250, the text encoded
    inside the call, the codec's decoding left out. And the decoding steps it takes."""
    n_frames = round(seconds * CODEC.frame_rate)
    steps = n_frames + CODEC.n_q - 1  # the delay pattern's decoding steps
    ids, mask = torch.randint(0, 32128, (1, 12), generator=torch.Generator().manual_seed(0)), torch.ones(1, 12, dtype=torch.long)
    silent = type("Decoded", (), {"audio_values": torch.zeros(1, 1, 1)})()
    fns = {}
    if lm is not None:
        def ours():
            text, text_mask = lm.encode_text(ids, mask.bool())
            generate_codes(lm, text, text_mask, None, n_frames, cfg_coef=3.0, top_k=250,
                           generator=torch.Generator().manual_seed(0))
        fns["ours"] = ours
    if reference is not None:
        def theirs():
            decode = reference.audio_encoder.decode
            reference.audio_encoder.decode = lambda *args, **kwargs: silent  # time the LM alone
            try:
                reference.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=250, guidance_scale=3.0,
                                   max_new_tokens=steps)
            finally:
                reference.audio_encoder.decode = decode
        fns["reference"] = theirs
    return fns, steps


def memory_of(side: str, config: str, dtype_name: str, seconds: float) -> float:
    """In a fresh process: build one side alone, generate, and return the process's peak resident MB
    (the framework, the weights and the generation, as a user's process would hold them)."""
    dtype = getattr(torch, dtype_name)
    reference, lm = (reference_model(config, dtype), None) if side == "reference" else (None, ours_alone(config, dtype)[1])
    fns, _ = generation(reference, lm, seconds)
    with torch.inference_mode():
        fns[side]()
    return resident_bytes("VmHWM") / 2**20


def resident_bytes(field="VmRSS") -> int:
    """This process's resident memory (VmRSS) or its peak since the last reset (VmHWM), Linux only."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{field} not in /proc/self/status")


def copy_bandwidth(megabytes=512, rounds=5) -> float:
    """Bytes per second a plain tensor copy reads on this machine (best of `rounds`). A copy also writes
    what it reads, so on a CPU whose cores share one memory bus this is about half of what a read-only
    stream (a matrix-vector product) gets: a rough gauge of the machine, not a floor."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.zeros_like(source)  # touched: the first write to fresh pages would time the page faults
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - began)
    return source.numel() * 4 / best


def step_weights(lm) -> list:
    """The weights one decoding step reads: every decoder weight except the cross-attention's K/V
    projections (computed once per generation) and the embedding tables (one row each)."""
    skipped = {id(p) for block in lm.transformer.blocks if block.cross_attention is not None
               for p in block.cross_attention.to_kv.parameters()}
    return [p for p in list(lm.transformer.parameters()) + list(lm.heads.parameters()) if id(p) not in skipped]


def weight_bytes_per_step(lm) -> int:
    return sum(p.numel() * p.element_size() for p in step_weights(lm))


def product_floor(lm, rounds: int = 5) -> dict:
    """The floor of a decoding step from what this machine does: the step's own matrix products (every
    matrix it reads, times two rows, in the model's order and dtype), run back to back in each of
    transformer.Linear's forms, best of `rounds`. Their bytes ÷ the faster form's time is the measured
    GEMV bandwidth, and 1 / that time the steps per second of a step that did nothing else."""
    matrices = [p for p in step_weights(lm) if p.dim() == 2]
    rows = {p.shape[1]: torch.randn(2, p.shape[1], dtype=p.dtype) for p in matrices}
    best = {}
    with torch.inference_mode():
        for name, form in transformer.LINEAR_FORMS.items():
            for p in matrices:  # warm-up
                form(rows[p.shape[1]], p, None)
            best[name] = float("inf")
            for _ in range(rounds):
                began = time.perf_counter()
                for p in matrices:
                    form(rows[p.shape[1]], p, None)
                best[name] = min(best[name], time.perf_counter() - began)
    weights = sum(p.numel() * p.element_size() for p in matrices)
    result = {f"gemv_gb_per_second {name}": weights / seconds / 1e9 for name, seconds in best.items()}
    result["floor_steps_per_second"] = 1 / min(best.values())
    return result


def cpu_name() -> str:
    """The CPU's model and the vector extensions that decide the fast paths (Linux: /proc/cpuinfo)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    return f"{model} ({', '.join(f for f in wanted if f in flags) or 'none of ' + '/'.join(wanted)})"


def print_decisions():
    """What autotune.py measured and chose in this process, one line per decision."""
    for key, decision in autotune.decisions().items():
        times = ", ".join(f"{name} {seconds * 1e6:.1f} µs" for name, seconds in decision["seconds"].items())
        parts = ("×".join(map(str, part)) if isinstance(part, torch.Size) else str(part).replace("torch.", "")
                 for part in key)
        print(f"  {' '.join(parts):42s} -> {decision['choice']}   ({times})")


def alternate(fns: dict, rounds: int) -> dict:
    """{name: best seconds of `rounds` calls}, the calls alternating between the names, so that both
    sides see the same drift of a shared machine's speed."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            began = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - began)
    return best


def time_versus(config: str, dtype_name: str, seconds: float, rounds: int) -> dict:
    """Ours and the reference generating `seconds` of codes (see `generation`), alternately, best of
    `rounds`; the peak memory of each in a process of its own; the codec decoding 10 s of codes."""
    dtype = getattr(torch, dtype_name)
    reference, codec, lm = reference_and_ours(config, dtype)
    fns, steps = generation(reference, lm, seconds)
    codes = torch.randint(0, codec.codebook_size, (1, codec.n_q, round(10 * codec.frame_rate)))
    decoding = dict(ours=lambda: codec.decode(codes), reference=lambda: reference.audio_encoder.decode(codes[None], [None]))
    with torch.inference_mode():
        best = alternate(fns, rounds)
        if reference is not None:
            reference.audio_encoder.float()  # both codecs decode in float32 (ours stays float32 in MusicGen.to)
        decode = alternate({name: decoding[name] for name in fns}, rounds)
    bandwidth, weights, floor = copy_bandwidth(), weight_bytes_per_step(lm), product_floor(lm)
    del reference, codec, lm
    result = dict(config=config, dtype=dtype_name, steps=steps, cpu=cpu_name(), torch_threads=torch.get_num_threads(),
                  reference="HF transformers " + transformers.__version__ if transformers else "not installed")
    for name in fns:
        command = [sys.executable, "-m", "experiments.benchmark", "--memory-of", name, "--config", config, "--dtype", dtype_name,
                   "--seconds", str(seconds)]
        peak = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip().splitlines()[-1]
        result[f"{name}_steps_per_second"] = steps / best[name]
        result[f"{name}_peak_mb"] = float(peak)
        result[f"{name}_codec_decode_10s_seconds"] = decode[name]
    if "reference" in fns:
        result["steps_ratio"] = best["reference"] / best["ours"]
        result["codec_decode_ratio"] = decode["reference"] / decode["ours"]
    result["weights_mb_read_per_step"] = weights / 2**20
    result["copy_gb_per_second"] = bandwidth / 1e9
    result.update(floor)  # the step's own products, timed: a step that did nothing else
    result["ours_fraction_of_floor"] = result["ours_steps_per_second"] / floor["floor_steps_per_second"]
    if "reference" in fns:
        result["reference_fraction_of_floor"] = result["reference_steps_per_second"] / floor["floor_steps_per_second"]
    return result


def bfloat16_agreement(model: MusicGen, seconds: float = 4.0) -> dict:
    """How far the LM in bfloat16 strays from float32: greedy decoding (guidance on) of the same
    descriptions in both, the first pattern step where their tokens differ; and the mean log-likelihood
    per token that each gives to the float32 codes (teacher forcing), their difference."""
    descriptions = ["a cheerful fast tune on a plucked guitar with drums", "a sad slow piece for strings"]
    model.set_generation_params(duration=seconds, use_sampling=False)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.lm.to(dtype)
        decoded = []
        model.codec.decode, decode = (lambda codes: decoded.append(codes) or torch.zeros(1)), model.codec.decode
        try:
            model.generate(descriptions)
        finally:
            model.codec.decode = decode
        results[dtype] = decoded[0]
    model.lm.float()
    codes32, codes16 = results[torch.float32], results[torch.bfloat16]
    sequences = [model.lm.pattern.build(c, model.lm.special)[0] for c in (codes32, codes16)]  # (B, K, S) each
    differs = (sequences[0] != sequences[1]).any(dim=(0, 1)).nonzero()
    ids, mask = model.tokenizer.encode(descriptions)
    likelihood = {}
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            model.lm.to(dtype)
            text, text_mask = model.lm.encode_text(ids, mask)
            _, per_codebook = model.lm.compute_loss(codes32, text, text_mask, None)
            likelihood[dtype] = -float(per_codebook.float().mean())
    model.lm.float()
    return dict(agreement_seconds=seconds, pattern_steps=sequences[0].shape[-1],
                first_differing_step=int(differs[0]) if len(differs) else None,
                log_likelihood_float32=likelihood[torch.float32], log_likelihood_bfloat16=likelihood[torch.bfloat16],
                log_likelihood_difference=likelihood[torch.bfloat16] - likelihood[torch.float32])


def main(argv=None):
    p = argparse.ArgumentParser(description="Speed benchmarks (KV cache, real-time factor, step times).")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run", help="run directory from train.py (default: untrained tiny models)")
    source.add_argument("--pretrained", metavar="FOLDER", help="a published MusicGen folder: its generation only")
    source.add_argument("--versus", action="store_true", help="ours and HF transformers' side by side (--config)")
    source.add_argument("--memory-of", choices=["ours", "reference"], help=argparse.SUPPRESS)  # --versus' subprocess
    source.add_argument("--manifest-memory", action="store_true",
                        help="peak memory of training on the toy manifest vs one 10x as long (lazy data)")
    p.add_argument("--config", choices=sorted(DECODERS), default="tiny", help="with --versus: the decoder size")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="with --pretrained or --versus: the LM's dtype")
    p.add_argument("--seconds", type=float, default=10.0, help="audio to generate (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds, best kept (default 5)")
    p.add_argument("--agreement", action="store_true", help="also compare the LM in bfloat16 with float32")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.versus and transformers is None:
        print("HF transformers is not installed (pip install -r requirements-dev.txt): measuring ours alone")
    if args.memory_of:
        print(memory_of(args.memory_of, args.config, args.dtype, args.seconds))
        return
    if args.manifest_memory:
        result = manifest_memory.compare()
    elif args.versus:
        result = time_versus(args.config, args.dtype, args.seconds, args.rounds)
    elif args.pretrained:
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
        if args.agreement:
            result.update(bfloat16_agreement(model))
    result.setdefault("cpu", cpu_name())
    for key, value in result.items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    if autotune.decisions():
        print("fast paths chosen by measurement on this machine (autotune.py):")
        print_decisions()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
