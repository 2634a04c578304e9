"""The training page: RUN/index.html, rewritten as the run goes (reload it to see the progress).

    RUN/index.html             the page: nothing on it loads from the network
    RUN/page/state.json        what it shows: the stages' curves, evaluations and samples so far
    RUN/page/*.png, *.wav      spectrograms and the samples along the way

Per stage the page shows the loss curves (the codec's loss and mel term; the LM's per-codebook
cross-entropy, train and held-out, with chance ln(codebook_size) marked), the codebook usage of every
RVQ level over training, tokens per second; the run's diff from the paper's configs; the pattern's
grid (Figure 1); the codec's reconstructions; and samples generated at fixed fractions of the LM
stage (SNAPSHOTS), each with its player and spectrogram (and the melody's chromagram beside the sample's),
so a student hears the model learn. Every write goes to a temporary file renamed over the old one: a
reload never sees half a page, and each update reads and writes the state once (`timed`). The stages
call `record`, `snapshot` and `reconstructions` (rank 0), as `page.record(out, "lm", rows, ...)`.
"""
import html
import json
import math
import os
import time
from functools import wraps
from pathlib import Path

import torch

from audio import write_audio
from conditioners import ChromaExtractor
from pictures import chromagram_png, line_chart_svg, spectrogram_png

SNAPSHOTS = (0.1, 0.3, 0.6, 1.0)  # fractions of the LM stage at which samples are generated


def write_atomic(path: Path, data):
    tmp = path.with_name(path.name + ".tmp")
    (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
    os.replace(tmp, path)


def load(out) -> dict:
    path = Path(out) / "page" / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save(out, state: dict):
    folder = Path(out) / "page"
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "state.json", json.dumps(state))
    write_atomic(Path(out) / "index.html", render(state))


MAX_ROWS = 4000  # per curve: a long run keeps every other row of its older part, so the page stays small


def merge(old: list, new: list) -> list:
    """Rows [step, ...] of a curve: the new rows replace every old row from their first step on (a
    resumed run repeats the steps after its last checkpoint); past MAX_ROWS the older half is thinned."""
    rows = [row for row in old if not new or row[0] < new[0][0]] + new
    while len(rows) > MAX_ROWS:
        half = len(rows) // 2
        rows = rows[:half:2] + rows[half:]
    return rows


def timed(fn):
    """One update of the page: load its state, let `fn(out, state, ...)` change it, count the seconds the
    page costs the run (shown on the page; train.py prints it), and save it once."""
    @wraps(fn)
    def call(out, *args, **kwargs):
        began = time.perf_counter()
        state = load(out)
        fn(out, state, *args, **kwargs)
        state["seconds"] = state.get("seconds", 0.0) + time.perf_counter() - began
        save(out, state)
    return call


@timed
def start(out, state: dict, recipe: list, grid: str, title: str):
    """A new page, or the existing one of a resumed run: recipe [(config, field, value, paper's)]."""
    state.update(recipe=recipe, grid=grid, title=title)


@timed
def record(out, state: dict, stage: str, rows: list = (), evaluation: dict = None, **facts):
    """Add a stage's curve rows [step, loss, ...] and, optionally, one evaluation {"step": s, ...}."""
    entry = state.setdefault(stage, {"rows": [], "evals": []})
    entry["rows"] = merge(entry["rows"], [list(r) for r in rows])
    if evaluation is not None:
        entry["evals"] = [e for e in entry["evals"] if e["step"] < evaluation["step"]] + [evaluation]
    entry.update(facts)


def picture_of(folder: Path, name: str, wav, sample_rate: int, with_chroma: bool = False) -> dict:
    """Write name.wav and its spectrogram name.png (and name_chroma.png) in folder; their paths."""
    write_audio(folder / f"{name}.wav", wav.detach().float().cpu().reshape(1, -1), sample_rate)
    write_atomic(folder / f"{name}.png", spectrogram_png(wav, sample_rate))
    item = dict(wav=f"page/{name}.wav", png=f"page/{name}.png")
    if with_chroma:
        extractor = ChromaExtractor(sample_rate, argmax=False)
        write_atomic(folder / f"{name}_chroma.png", chromagram_png(extractor(wav.detach().float().cpu().reshape(1, 1, -1))[0],
                                                                     extractor.frame_rate))
        item["chroma"] = f"page/{name}_chroma.png"
    return item


@timed
def snapshot(out, state: dict, step: int, max_steps: int, model, prompts: dict):
    """Generate the fixed prompts with the LM as it is at `step` (model: a musicgen.MusicGen over the
    stage's own codec and LM) and put them on the page. prompts: {"descriptions": [...], "melody": wav
    (1, N), "melody_description": str}. Seeded: the samples differ between snapshots by the weights alone."""
    folder = Path(out) / "page"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    items = []
    with torch.no_grad():
        audio = model.generate(prompts["descriptions"])  # (B, 1, N)
        for i, (text, wav) in enumerate(zip(prompts["descriptions"], audio)):
            items.append(dict(picture_of(folder, f"lm_{step}_text_{i}", wav, model.sample_rate), label=text))
        melody = prompts["melody"]
        if model.lm.melody_projection is not None:  # (a published text-to-music model has no melody input)
            wav = model.generate_with_chroma([prompts["melody_description"]], melody[None], model.sample_rate)[0]
            items.append(dict(picture_of(folder, f"lm_{step}_melody", wav, model.sample_rate, with_chroma=True),
                              label=f"{prompts['melody_description']} + the melody"))
    if "melody_reference" not in state and model.lm.melody_projection is not None:
        state["melody_reference"] = picture_of(folder, "melody_reference", melody, model.sample_rate, with_chroma=True)
    snapshots = [s for s in state.get("snapshots", []) if s["step"] < step]
    state["snapshots"] = snapshots + [dict(step=step, percent=round(100 * step / max_steps), items=items)]


@timed
def reconstructions(out, state: dict, originals, recons, sample_rate: int):
    """The codec's held-out reconstructions (lists of (1, N) tensors), originals beside them."""
    folder = Path(out) / "page"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(picture_of(folder, f"codec_{i}_original", a, sample_rate),
              picture_of(folder, f"codec_{i}_reconstruction", b, sample_rate)) for i, (a, b) in
             enumerate(zip(originals, recons))]
    state["reconstructions"] = pairs


# ---- the HTML ------------------------------------------------------------------------------------------
STYLE = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
h2{margin-top:1.6em;border-bottom:1px solid #ddd}figure{display:inline-block;margin:0.4em;vertical-align:top}
figcaption{font-size:small;max-width:330px}table{border-collapse:collapse;font-size:small}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}pre{background:#f6f6f6;padding:0.6em}
img{display:block}.row{display:flex;flex-wrap:wrap;align-items:flex-start}"""


def player(item: dict, caption: str) -> str:
    chroma = f'<img src="{item["chroma"]}" alt="chromagram">' if "chroma" in item else ""
    return (f'<figure><img src="{item["png"]}" alt="spectrogram">{chroma}<audio controls preload="metadata" '
            f'src="{item["wav"]}"></audio><figcaption>{html.escape(caption)}</figcaption></figure>')


def codec_section(entry: dict) -> str:
    rows = entry["rows"]  # [step, loss, mel, [usage per level] | None]
    parts = [line_chart_svg({"loss": ([r[0] for r in rows], [r[1] for r in rows]),
                             "mel term": ([r[0] for r in rows], [r[2] for r in rows])},
                            "step", "loss", title="Codec training loss (per step)")]
    usage = [(r[0], r[3]) for r in rows if r[3]]
    if usage:
        levels = len(usage[0][1])
        parts.append(line_chart_svg({f"level {k + 1}": ([s for s, _ in usage], [u[k] for _, u in usage])
                                     for k in range(levels)}, "step", "codes in use (perplexity)",
                                    title="Codebook usage per RVQ level", hlines={
                                        f"all {entry.get('codebook_size', '')}": entry.get("codebook_size", 0)}))
    evals = entry["evals"]
    if evals:
        parts.append(line_chart_svg({"held-out mel distance": ([e["step"] for e in evals],
                                                                [e["mel_distance"] for e in evals])},
                                    "step", "mel distance", title="Codec, held-out clips"))
    return '<div class="row">' + "".join(parts) + "</div>"


def lm_section(entry: dict) -> str:
    rows = entry["rows"]  # [step, loss, [cross-entropy per codebook]]
    card = entry.get("codebook_size", 2)
    K = len(rows[0][2]) if rows else 0
    series = {f"train k{k + 1}": ([r[0] for r in rows], [r[2][k] for r in rows]) for k in range(K)}
    evals = entry["evals"]
    for k in range(K):
        if evals:
            series[f"held-out k{k + 1}"] = ([e["step"] for e in evals], [e["heldout"][k] for e in evals])
    chart = line_chart_svg(series, "step", "cross-entropy (nats)", title="LM cross-entropy per codebook k "
                           "(held-out dashed)", hlines={f"chance: ln {card} = {math.log(card):.2f}": math.log(card)},
                           width=820, height=380, colours={name: int(name[-1]) - 1 for name in series},
                           dashed={name for name in series if name.startswith("held-out")})
    speed = f"<p>{entry['tokens_per_second']:.0f} tokens per second.</p>" if "tokens_per_second" in entry else ""
    return chart + speed


def render(state: dict) -> str:
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(state.get('title', 'run'))}"
           f"</title><style>{STYLE}</style></head><body><h1>{html.escape(state.get('title', 'Training run'))}</h1>",
           "<p>Rewritten as the run goes: reload to see the progress"
           + (f" (this page has cost the run {state['seconds']:.0f} s so far)" if "seconds" in state else "") + ".</p>"]
    if "codec" in state:
        out.append("<h2>Stage 1: the codec</h2>" + codec_section(state["codec"]))
    if state.get("reconstructions"):
        out.append("<h3>Held-out clips through the codec (original, reconstruction)</h3>")
        for i, (a, b) in enumerate(state["reconstructions"]):
            out.append("<div class='row'>" + player(a, f"clip {i}: original")
                       + player(b, f"clip {i}: reconstruction") + "</div>")
    if "lm" in state:
        out.append("<h2>Stage 2: the LM</h2>" + lm_section(state["lm"]))
    if state.get("snapshots"):
        out.append("<h2>Samples along the way</h2><p>The same prompts and seed at every snapshot: what changes "
                   "is the LM's weights.</p>")
        if "melody_reference" in state:
            out.append("<div class='row'>" + player(state["melody_reference"], "the melody given as chroma") + "</div>")
        for snap in state["snapshots"]:
            out.append(f"<h3>Step {snap['step']} ({snap['percent']}% of the LM stage)</h3><div class='row'>")
            out += [player(item, item["label"]) for item in snap["items"]]
            out.append("</div>")
    if state.get("grid"):
        out.append(f"<h2>The codebook pattern (paper Figure 1)</h2><pre>{html.escape(state['grid'])}</pre>")
    if state.get("recipe"):
        out.append("<h2>This run vs the paper</h2><table><tr><th>config</th><th>field</th><th>this run</th>"
                   "<th>paper</th></tr>")
        out += [f"<tr><td>{c}</td><td>{html.escape(str(f))}</td><td>{html.escape(str(v))}</td>"
                f"<td>{html.escape(str(p))}</td></tr>" for c, f, v, p in state["recipe"]]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
