"""The paper's evaluation in miniature (§4.2, Tables 1-3), including the pattern ablation.

MusicGen is scored with pretrained models (PaSST, VGGish, CLAP) and human listeners. None of these
exists for our toy music, so each objective metric gets a toy analogue built on one small attribute
probe (probe.py), trained on REAL toy clips to recognise instrument, tempo, mode, register and drums:

    metric (paper)                          here
    KL on PaSST label distributions         KL on the probe's label distributions, per attribute
    FAD on VGGish embeddings                Fréchet distance on the probe's hidden layer
    CLAP text/audio score                   text adherence: probe accuracy on the attributes a
                                            description states (our labels are exact, CLAP's are not)
    chroma cosine similarity (melody)       the same, with conditioners.ChromaExtractor
    (EnCodec paper) mel distance, SI-SNR,   the same, on held-out clips through the trained codec
    bitrate, codebook usage

Shape letters: B batch, N samples, K codebooks, T frames.
Data flow: runs/tiny/{codec,lm}.pt + data/toy held-out clips → generation → probe / chroma →
results.json, results.md (Tables 1-3) and eval/index.html (listen in a browser).

    python evaluate.py --run runs/tiny                    # Tables 1 and 2, codec metrics
    python evaluate.py --run runs/tiny --ablate-patterns  # Table 3: one LM per pattern, same budget
"""
import argparse
import html
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import data
import train
import stages
from audio import PEAK, stack_wavs, write_audio
from metrics import chroma_cosine, codec_metrics, frechet_distance, kl_divergence
from musicgen import MusicGen
from patterns import PATTERN_NAMES, make_pattern
from pictures import chromagram_png, line_chart_svg, spectrogram_png
from conditioners import ChromaExtractor
from probe import batched, beat_strength, check_probe, load_or_train_probe, mean, probe_accuracy, probe_outputs


def score_audio(probe, audio, sample_rate, clips, reference):
    """Table 1's three numbers for audio generated from `clips`' descriptions (one clip per item).

    reference: probe_outputs of the real clips' (probs) and of all real held-out clips (embedding).
    Returns {"adherence", "adherence_per_attribute", "kl", "frechet", "beat"}.
    """
    features, probs, embedding = probe_outputs(probe, audio, sample_rate)
    per_attribute = probe_accuracy(probe, features, clips, stated_only=True)
    # KL(reference ‖ generated) per attribute (paper: on PaSST's 527 labels), then averaged.
    kl = mean(kl_divergence(reference["probs"][name], probs[name]) for name in probs)
    return dict(adherence=mean(per_attribute.values()), adherence_per_attribute=per_attribute, kl=kl,
                frechet=frechet_distance(embedding, reference["embedding"]),
                beat=float(batched(lambda wav: beat_strength(wav, sample_rate), audio).mean()))


def generate_in_batches(fn, clips, batch_size=16, seed=0):
    """fn(clips of one batch) -> (b, 1, N); seeded once, so a condition is reproducible. -> (B, 1, N)."""
    torch.manual_seed(seed)
    return torch.cat([fn(clips[i:i + batch_size]) for i in range(0, len(clips), batch_size)])


def stack_melodies(clips):
    """The melody stems (the paper's drum-free chroma source), or the mix where there is none: (b, 1, N)."""
    return stack_wavs([c.melody_wav if c.melody_wav is not None else c.wav for c in clips])


# ==== Tables 1 and 2 ==================================================================================
def evaluate_run(run_dir, data_dir, n=48, seed=0, batch_size=16, n_listen=4, out_dir=None):
    """Codec metrics, Table 1 (conditioning, CFG), Table 2 (melody), audio page. Returns results dict."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir or run_dir / "eval")
    probe, probe_report = load_or_train_probe(run_dir, data_dir, seed)
    check_probe(probe_report)
    model = MusicGen.load(run_dir)
    sr = model.sample_rate
    heldout = data.load_clips(data_dir, sr, split="heldout") or data.load_clips(data_dir, sr)
    items = heldout[:n]
    duration = items[0].wav.shape[-1] / sr
    real = probe_outputs(probe, stack_wavs([c.wav for c in heldout]), sr)
    reference = dict(probs={k: v[:len(items)] for k, v in real[1].items()}, embedding=real[2])

    codec, recon = codec_metrics(model.codec, stack_wavs([c.wav for c in items]), batch_size)
    audio = {}  # condition -> (B, 1, N)
    seconds = {}
    coef = model.lm.cfg.cfg_coef  # the model's default guidance (paper: 3)
    TEXT, MELODY = f"text, cfg_coef {coef:g}", f"text + melody, cfg_coef {coef:g}"  # the headline rows
    from_text = lambda b: model.generate([c.description for c in b])  # one batch of descriptions
    conditions = {  # name -> (cfg_coef, how to generate one batch)
        "unconditional": (3.0, lambda b: model.generate_unconditional(len(b))),
        # cfg_coef 1 is the conditional model alone: l_null + 1·(l_cond − l_null) = l_cond; None skips
        # the null half of the batch, which gives the same logits at half the cost.
        "text, cfg_coef 1": (None, from_text),
        TEXT: (coef, from_text),
        "text, cfg_coef 3": (3.0, from_text),  # the paper's (the same row when the default is 3)
        MELODY: (coef, lambda b: model.generate_with_chroma([c.description for c in b], stack_melodies(b), sr)),
    }
    for name, (cfg_coef, fn) in conditions.items():
        model.set_generation_params(duration=duration, use_sampling=True, top_k=250, top_p=0.0, temperature=1.0,
                                    cfg_coef=cfg_coef)
        started = time.perf_counter()
        audio[name] = generate_in_batches(fn, items, batch_size, seed)[..., :items[0].wav.shape[-1]]
        seconds[name] = time.perf_counter() - started
        print(f"generated {len(items)} x {duration:g} s, {name}: {seconds[name]:.1f} s")

    table1 = {"real clips (ceiling)": score_audio(probe, stack_wavs([c.wav for c in items]), sr, items, reference),
              "real clips through the codec": score_audio(probe, recon, sr, items, reference)}
    for name in [name for name in audio if name != MELODY]:  # every generated row but Table 2's melody one
        table1[name] = score_audio(probe, audio[name], sr, items, reference)
    melody_ref = stack_melodies(items)
    table2 = {"text only": dict(chroma_cosine=chroma_cosine(melody_ref, audio[TEXT], sr),
                                adherence=table1[TEXT]["adherence"]),
              "text + melody": dict(chroma_cosine=chroma_cosine(melody_ref, audio[MELODY], sr),
                                    adherence=score_audio(probe, audio[MELODY], sr, items,
                                                          reference)["adherence"]),
              "real clips (ceiling)": dict(chroma_cosine=chroma_cosine(melody_ref, stack_wavs([c.wav for c in items]), sr),
                                           adherence=table1["real clips (ceiling)"]["adherence"])}
    headline = table1[TEXT]  # the default guidance
    results = {
        "codec.mel_distance": codec["mel_distance"], "codec.si_snr_db": codec["si_snr_db"],
        "codec.bitrate_kbps": codec["bitrate_kbps"], "codec.perplexity": codec["perplexity"],
        "codec.chroma_cosine": codec["chroma_cosine"],
        "probe.accuracy": probe_report["accuracy"], "probe.accuracy_degraded": probe_report["accuracy_degraded"],
        "probe.accuracy_codec": table1["real clips through the codec"]["adherence"],
        "text.adherence": headline["adherence"], "text.kl": headline["kl"], "text.frechet": headline["frechet"],
        "text.cfg_coef": coef, "text.beat": headline["beat"],
        "real.beat": table1["real clips (ceiling)"]["beat"],
        "melody.chroma_cosine": table2["text + melody"]["chroma_cosine"],
        "melody.chroma_cosine_text_only": table2["text only"]["chroma_cosine"],
        # seconds of compute per second of audio, CFG on (batch of 2B), codec decoding included
        "generation.real_time_factor": seconds[TEXT] / (len(items) * duration),
        "n_items": len(items), "seed": seed, "duration": duration,
        "probe_per_attribute": probe_report["per_attribute"], "table1": table1, "table2": table2,
    }
    # The listening page: the first n_listen items, one row each, every condition side by side, each
    # with its spectrogram; the melody stem and the melody-conditioned take also with their chromagrams.
    rows, extractor = [], ChromaExtractor(sr, argmax=False)
    for i, clip in enumerate(items[:n_listen]):
        takes = [("real clip", clip.wav), ("melody stem (chroma source)", stack_melodies([clip])[0]),
                 ("real clip through the codec", recon[i])] + [(name, audio[name][i]) for name in audio]
        cells = []
        for j, (name, wav) in enumerate(takes):
            path = out_dir / "samples" / f"item{i}_{j}.wav"
            write_audio(path, wav.cpu(), sr)  # peak-normalised to audio.PEAK, like every file we write
            path.with_suffix(".png").write_bytes(spectrogram_png(wav, sr))
            if name in ("melody stem (chroma source)", MELODY, TEXT):  # Table 2's comparison, by eye
                chroma = extractor(wav.float().cpu().reshape(1, 1, -1))[0]
                path.with_name(path.stem + "_chroma.png").write_bytes(chromagram_png(chroma, extractor.frame_rate))
            same = next((other for other, earlier in takes[:j] if torch.equal(earlier, wav)), None)
            cells.append((name, path.relative_to(out_dir).as_posix(), f"same audio as {same}" if same else ""))
        rows.append((clip.description, cells))
    results["listening_rows"] = rows
    results["listening_page"] = str(write_listening_page(out_dir, rows, results_markdown(results)))
    return results


def write_listening_page(out_dir, rows, metrics_markdown="", title="MusicGen from scratch: evaluation samples",
                         table3=None):
    """One HTML page: the metrics tables (and Table 3 as a chart, when the ablation ran), then one table
    row per description with a player for every condition side by side, each under its spectrogram
    (X.png beside X.wav) and, where written, its chromagram (X_chroma.png). rows: [(description,
    [(condition, relative wav path, note)])]; the conditions of the first row head the columns."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    esc = lambda text: html.escape(str(text), quote=True)
    lines = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>{esc(title)}</title><style>body{{font-family:sans-serif;margin:1em}}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
             "audio{width:12em}small{color:#666}</style></head><body>", f"<h1>{esc(title)}</h1>",
             f"<p>Every file is peak-normalised to {PEAK:g} (the toy clips' own peak; <code>audio.write_audio</code>), "
             "so the players are comparable in level; the metrics are computed on the audio before levelling.</p>"]
    table = []
    for line in metrics_markdown.splitlines():  # the markdown of results_markdown, as HTML
        if line.startswith("| ---"):
            continue
        if line.startswith("|"):
            tag = "th" if not table else "td"
            table.append("<tr>" + "".join(f"<{tag}>{esc(c.strip())}</{tag}>" for c in line.strip("|").split("|")) + "</tr>")
            continue
        if table:
            lines.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.strip():
            lines.append(f"<p>{esc(line.replace('**', ''))}</p>")
    if table:
        lines.append("<table>" + "".join(table) + "</table>")
    if table3:  # Table 3 as a chart: held-out NLL per codebook, one line per pattern
        K = len(next(iter(table3.values()))["valid_nll_per_codebook"])
        lines.append(line_chart_svg({name: (list(range(1, K + 1)), row["valid_nll_per_codebook"])
                                     for name, row in table3.items()}, "codebook k", "held-out NLL (nats)",
                                    title="Table 3: the interleaving patterns", width=620, height=320))
    if rows:
        columns = [name for name, _, _ in rows[0][1]]
        lines.append("<h2>Samples</h2><table><tr><th>description</th>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
        for description, cells in rows:
            lines.append(f"<tr><td>{esc(description)}</td>" + "".join(
                f"<td>{pictures_of(out_dir, path)}<audio controls preload='metadata' src='{esc(path)}'></audio>"
                + (f"<br><small>{esc(note)}</small>" if note else "") + "</td>" for _, path, note in cells) + "</tr>")
        lines.append("</table>")
    lines.append("</body></html>")
    page = out_dir / "index.html"
    page.write_text("\n".join(lines) + "\n")
    return page


def pictures_of(out_dir: Path, wav_path: str) -> str:
    """The <img> tags of the spectrogram and chromagram written beside a sample, those that exist."""
    stem = wav_path.removesuffix(".wav")
    return "".join(f"<img src='{html.escape(stem + suffix, quote=True)}' alt='{what}' style='display:block;width:16em'>"
                   for suffix, what in ((".png", "spectrogram"), ("_chroma.png", "chromagram"))
                   if (out_dir / (stem + suffix)).exists())


# ==== Table 3: the interleaving patterns ==============================================================
# The paper's Table 3 (MusicGen 300M, §4.3): flattening scores best on the objective metrics but needs
# K times more decoding steps; the delay pattern comes close at the step count of parallel, which is
# why MusicGen uses it ("flattening improves generation, but at a high computational cost, while
# similar performance can be reached for a fraction of this cost using a simple delaying approach").
# Our tiny runs may order them differently: at a fixed number of training steps and a fixed window,
# a pattern with K times longer sequences trains K times slower per step and sees the same frames.
def ablate_patterns(run_dir, data_dir, steps=500, n=48, seed=0, device="cpu", preset=None, batch_size=16,
                    patterns=None):
    """Train one LM per pattern with the same budget on the same codec, then score each. -> {pattern: row}."""
    run_dir = Path(run_dir)
    preset = train.TINY if preset is None else preset
    # The tiny LM reads codebook 1 only (LMConfig.input_codebooks); a flattened step holds one
    # codebook's token, so compare the patterns as the paper does: every codebook read.
    preset = replace(preset, lm=replace(preset.lm, input_codebooks=None))
    probe, probe_report = load_or_train_probe(run_dir, data_dir, seed)
    check_probe(probe_report)
    rows = {}
    heldout, reference = None, None
    # The dataset is encoded once by the frozen codec (into run_dir/codes); every pattern's LM reads it.
    for name in (patterns or PATTERN_NAMES):
        out = run_dir / "ablation" / name
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / "codec.pt", out / "codec.pt")  # the same frozen codec for every pattern
        summary = stages.train_lm(out, data_dir, replace(preset, lm=replace(preset.lm, pattern=name)), max_steps=steps,
                                  seed=seed, device=device, codes_dir=run_dir / "codes")
        model = MusicGen.load(out)
        sr = model.sample_rate
        if heldout is None:
            heldout = data.load_clips(data_dir, sr, split="heldout") or data.load_clips(data_dir, sr)
            real = probe_outputs(probe, stack_wavs([c.wav for c in heldout]), sr)
            items = heldout[:n]
            reference = dict(probs={k: v[:len(items)] for k, v in real[1].items()}, embedding=real[2])
        duration = items[0].wav.shape[-1] / sr
        model.set_generation_params(duration=duration)  # the default guidance
        started = time.perf_counter()
        audio = generate_in_batches(lambda b: model.generate([c.description for c in b]), items, batch_size, seed)
        seconds = time.perf_counter() - started
        score = score_audio(probe, audio[..., :items[0].wav.shape[-1]], sr, items, reference)
        rows[name] = dict(valid_nll_per_codebook=summary["valid_loss_per_codebook"],
                          valid_nll=float(mean(summary["valid_loss_per_codebook"])),
                          adherence=score["adherence"], kl=score["kl"], frechet=score["frechet"],
                          decoding_steps_10s=make_pattern(name, model.lm.cfg.n_q).decoding_steps(
                              round(10 * model.frame_rate)),
                          generation_seconds=seconds, real_time_factor=seconds / (len(items) * duration),
                          train_seconds=summary["seconds"], steps=summary["steps"])
        print(f"{name}: {rows[name]}")
    return rows


# ==== reporting =======================================================================================
def results_markdown(results):
    """Tables 1-3 as markdown for the README (only the parts present in `results`)."""
    f3 = lambda x: f"{x:.3f}"
    lines = [f"Evaluated on {results.get('n_items', '?')} held-out descriptions (seed {results.get('seed', 0)}); "
             f"probe held-out accuracy {f3(results['probe.accuracy'])} (must be ≥ 0.95 to trust the metrics)."]
    if "codec.mel_distance" in results:
        lines += ["", "**Codec** (held-out clips): mel distance {}, SI-SNR {:.2f} dB, bitrate {:.2f} kbps, "
                  "perplexity per codebook {}.".format(f3(results["codec.mel_distance"]), results["codec.si_snr_db"],
                                                       results["codec.bitrate_kbps"],
                                                       " / ".join(f"{p:.0f}" for p in results["codec.perplexity"]))]
    if "table1" in results:
        lines += ["", "**Table 1 analogue** (paper: conditioning and CFG). Adherence ↑ (chance ≈ 0.4), KL ↓, Fréchet ↓; "
                  "beat: onset periodicity (ours, `beat_strength`; real ≈ 0.6).", "",
                  "| audio | adherence | KL | Fréchet | beat |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {k} | {f3(v['adherence'])} | {f3(v['kl'])} | {f3(v['frechet'])} | "
                  f"{v['beat']:.2f} |" if "beat" in v else  # results.json written before the beat column
                  f"| {k} | {f3(v['adherence'])} | {f3(v['kl'])} | {f3(v['frechet'])} | – |"
                  for k, v in results["table1"].items()]
    if "table2" in results:
        guidance = f", cfg_coef {results['text.cfg_coef']:g}" if "text.cfg_coef" in results else ""
        lines += ["", f"**Table 2 analogue** (paper: melody conditioning{guidance}). Chroma cosine ↑, "
                  "adherence ↑.", "",
                  "| audio | chroma cosine | adherence |", "| --- | --- | --- |"]
        lines += [f"| {k} | {f3(v['chroma_cosine'])} | {f3(v['adherence'])} |" for k, v in results["table2"].items()]
        lines += ["", f"Real-time factor (CFG on, CPU): {results['generation.real_time_factor']:.3f} s per s of audio."]
    if "table3" in results:
        lines += ["", f"**Table 3 analogue** (paper: interleaving patterns), {results.get('ablation_steps')} LM steps each. "
                  "Paper's finding (§4.3): flattening best but K× the decoding steps; delay close to it "
                  "at the step count of parallel.", "",
                  "| pattern | valid NLL per codebook | adherence | Fréchet | decoding steps for 10 s | generation s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {k} | {' / '.join(f'{x:.2f}' for x in v['valid_nll_per_codebook'])} | {f3(v['adherence'])} | "
                  f"{f3(v['frechet'])} | {v['decoding_steps_10s']} | {v['generation_seconds']:.1f} |"
                  for k, v in results["table3"].items()]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="The paper's metrics (§4.2) in miniature: Tables 1-2 for a trained run, "
                                            "and with --ablate-patterns Table 3 (one LM per interleaving pattern).")
    p.add_argument("--run", default="runs/tiny", help="run directory with codec.pt and lm.pt (from train.py)")
    p.add_argument("--data", default="data/toy", help="dataset folder (its held-out split is evaluated)")
    p.add_argument("--json", help="results file (default RUN/eval/results.json); results.md goes beside it")
    p.add_argument("--n", type=int, default=48, help="held-out descriptions to generate from (default 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16, help="items generated at once")
    p.add_argument("--ablate-patterns", action="store_true", help="Table 3: train one LM per pattern in RUN/ablation/")
    p.add_argument("--steps", type=int, default=500, help="LM steps per pattern for --ablate-patterns")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    run = Path(args.run)
    for name in ("codec.pt",) + (() if args.ablate_patterns else ("lm.pt",)):
        if not (run / name).exists():
            raise SystemExit(f"error: {run / name} not found (train first: python train.py --out {run})")
    json_path = Path(args.json) if args.json else run / "eval" / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    # Tables 1-2 and Table 3 come from separate commands; each keeps what the other wrote.
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    started = time.perf_counter()
    if args.ablate_patterns:
        _, probe_report = load_or_train_probe(run, args.data, args.seed)
        results["probe.accuracy"] = probe_report["accuracy"]
        results["table3"] = ablate_patterns(run, args.data, steps=args.steps, n=args.n, seed=args.seed,
                                            device=args.device, batch_size=args.batch_size)
        results["ablation_steps"] = args.steps
        results["ablation_command"] = " ".join(["python evaluate.py"] + (argv if argv is not None else sys.argv[1:]))
    else:
        results.update(evaluate_run(run, args.data, n=args.n, seed=args.seed, batch_size=args.batch_size,
                                    out_dir=json_path.parent))
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    markdown = results_markdown(results)
    (json_path.parent / "results.md").write_text(markdown)
    print(markdown)
    print(f"wrote {json_path} and {json_path.parent / 'results.md'} in {time.perf_counter() - started:.0f} s")
    if "listening_rows" in results:  # both commands rewrite the page: Tables 1-2's samples, Table 3's chart
        results["listening_page"] = str(write_listening_page(json_path.parent, results["listening_rows"], markdown,
                                                             table3=results.get("table3")))
        print(f"listen: open {results['listening_page']} in a browser")


if __name__ == "__main__":
    main()
