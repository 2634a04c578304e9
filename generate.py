"""Generate music from a trained run: by text, by melody (chroma), or by continuing a prompt (paper §3).

    python generate.py --run runs/tiny --text "a cheerful fast tune on a plucked guitar" --out out.wav
    python generate.py --run runs/tiny --text "sad strings" --melody tune.wav --duration 8 --seed 1
    python generate.py --run runs/tiny --prompt start.wav --duration 8 --out continued.wav
    python generate.py --pretrained musicgen-small --text "lo-fi hip hop beat" --duration 8 --out x.wav

`--pretrained FOLDER` runs a published MusicGen instead of a trained run: a folder in the layout HF
transformers' save_pretrained writes (e.g. `huggingface-cli download facebook/musicgen-small
--local-dir musicgen-small` on a machine with internet), read into our own modules (pretrained.py).

Several `--text` make a batch, written as out_0.wav, out_1.wav, ... Without `--text` the model
generates unconditionally. Bad input gets one line on stderr and exit code 2, never a traceback.
Durations past the training window are generated with sliding windows (see musicgen.MusicGen).
"""
import argparse
import sys
import warnings
from pathlib import Path

import torch

from audio import AudioError, read_audio, write_audio
from musicgen import MusicGen, check_generation_params
from pictures import spectrogram_png
from published.pretrained import PretrainedError

def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Generate audio with a MusicGen run trained by train.py, or a "
                                            "published MusicGen folder.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--run", default="runs/tiny", help="run directory holding codec.pt and lm.pt")
    source.add_argument("--pretrained", metavar="FOLDER",
                        help="a published MusicGen folder (save_pretrained layout, e.g. facebook/musicgen-small)")
    p.add_argument("--text", action="append", help="a description; repeat for a batch")
    p.add_argument("--melody", help="wav whose chroma (melody) the output should follow")
    p.add_argument("--prompt", help="wav to continue; the output starts with it (a tiny run regenerates its last "
                                    "0.18 s: LMConfig.trim_prompt_lookahead)")
    p.add_argument("--duration", type=float, default=None, help="seconds of audio (default: the training window)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same output")
    p.add_argument("--out", default="out.wav", help="output wav (a batch adds _0, _1, ...)")
    p.add_argument("--cfg-coef", type=float, default=None,
                   help="classifier-free guidance (paper: 3; default: the model's LMConfig.cfg_coef, 2 for a tiny run)")
    p.add_argument("--top-k", type=int, default=250, help="sample among the k most likely tokens (paper: 250)")
    p.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling; > 0 replaces top-k")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy")
    p.add_argument("--spectrogram", action="store_true", help="also write OUT.png, the spectrogram, beside OUT.wav")
    return p.parse_args(argv)


def read_input_audio(path: str, what: str):
    try:
        return read_audio(path)  # (C, N), sample rate
    except (AudioError, OSError) as error:
        fail(f"--{what}: {error}")


def main(argv=None):
    args = parse_args(argv)
    # ---- validate everything before loading a model ----
    texts = args.text
    if texts is not None and any(not t.strip() for t in texts):
        fail("--text is empty; describe the music, or leave --text out for unconditional generation")
    try:
        check_generation_params(args.duration, args.top_k, args.top_p, args.temperature)
    except ValueError as error:  # the API's rule, worded with the flags' names
        fail(f"--{str(error).replace('top_', 'top-')}")
    if args.melody and args.prompt:
        fail("use --melody or --prompt, not both")
    run = Path(args.run)
    if not args.pretrained and not (run / "lm.pt").is_file():  # (codec.pt too, unless the run is a fine-tune)
        fail(f"{run / 'lm.pt'} not found: is --run a directory written by `python train.py`?")
    melody = read_input_audio(args.melody, "melody") if args.melody else None
    prompt = read_input_audio(args.prompt, "prompt") if args.prompt else None

    try:
        model = MusicGen.from_pretrained(args.pretrained) if args.pretrained else MusicGen.load(run)
    except PretrainedError as error:  # already one line naming the file and the problem
        fail(str(error))
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as error:
        fail(f"cannot load the run in {run}: {(str(error).strip().splitlines() or [''])[0]}")
    model.set_generation_params(duration=args.duration, use_sampling=args.temperature > 0, top_k=args.top_k,
                                top_p=args.top_p, temperature=max(args.temperature, 1e-6),
                                cfg_coef="model" if args.cfg_coef is None else args.cfg_coef)
    # Unknown words become <unk>: a warning, one line each, and generation goes on.
    warnings.showwarning = lambda message, *rest, **kw: print(f"warning: {message}", file=sys.stderr)

    torch.manual_seed(args.seed)
    if melody is not None:
        wav, rate = melody
        chroma = model.lm.chroma
        if model.lm.melody_projection is None:
            fail(f"--melody: this model has no melody input (a text-to-music MusicGen; musicgen-melody has one)")
        if wav.shape[-1] * model.sample_rate / rate < chroma.hop_length:
            fail(f"--melody {args.melody} is shorter than one chroma frame "
                 f"({chroma.hop_length / model.sample_rate:.3f} s)")
        descriptions = texts or [""]
        audio = model.generate_with_chroma(descriptions, wav[None].expand(len(descriptions), -1, -1), rate)
    elif prompt is not None:
        wav, rate = prompt
        if wav.shape[-1] / rate < model.min_prompt_seconds:
            fail(f"--prompt {args.prompt} is shorter than {model.min_prompt_seconds:.2f} s "
                 f"(one codec frame beyond the encoder's look-ahead)")
        descriptions = texts or [""]
        audio = model.generate_continuation(wav[None].expand(len(descriptions), -1, -1), rate, descriptions)
    elif texts:
        audio = model.generate(texts)
    else:
        audio = model.generate_unconditional(1)

    # ---- write ----
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if audio.shape[0] == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(audio.shape[0])]
    for path, wav in zip(paths, audio):
        write_audio(path, wav.cpu(), model.sample_rate)
        print(f"wrote {path} ({wav.shape[-1] / model.sample_rate:.2f} s at {model.sample_rate} Hz)")
        if args.spectrogram:
            path.with_suffix(".png").write_bytes(spectrogram_png(wav, model.sample_rate))
            print(f"wrote {path.with_suffix('.png')} (its spectrogram)")


if __name__ == "__main__":
    main()
