"""Pictures without a plotting library: PNG spectrograms and chromagrams, SVG curves.

People learn by looking: a spectrogram shows why the codec sounds smeared, a chromagram whether a
sample follows its melody, a curve how training went. This file draws them with numpy and zlib only
(the run-time dependencies stay torch, numpy, soundfile, tqdm):

    spectrogram_png(wav, sample_rate)  log-magnitude STFT, frequency in Hz up, time in seconds across
    chromagram_png(chroma, frame_rate) the 12 pitch classes (C at the bottom) over time
    line_chart_svg(series, ...)        curves with labelled axes, e.g. loss against step
    write_png(path, rgb)               the PNG format itself: signature, IHDR, IDAT (zlib), IEND

A PNG is a signature and chunks, each `length (4 bytes) · type (4) · data · CRC-32 of type and data`;
the image is IDAT: rows of pixels, each row led by a filter byte (0: none), compressed with zlib. Axis
labels are drawn with a 3 × 5 pixel font below. Not MusicGen; used by the training page (train.py),
the evaluation page (evaluate.py) and `generate.py --spectrogram`.

Shape letters: N samples, F frames, H × W pixels (rows top to bottom).
"""
import struct
import zlib

import numpy as np
import torch

# ---- the PNG format ------------------------------------------------------------------------------------
def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> the bytes of a PNG file (8-bit RGB, no interlacing, filter 0 on every row)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    H, W, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = np.concatenate([np.zeros((H, 1), np.uint8), rgb.reshape(H, W * 3)], axis=1)  # a 0 (filter) per row
    header = struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)  # width, height, bit depth 8, colour type 2 (RGB)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + chunk(b"IEND", b""))


def write_png(path, rgb: np.ndarray):
    with open(path, "wb") as f:
        f.write(png_bytes(rgb))


# ---- colours and a tiny font ---------------------------------------------------------------------------
# A dark-to-bright colour map (black, purple, red, orange, pale yellow), linear between these stops.
STOPS = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """values in [0, 1], any shape -> uint8 RGB, shape + (3,)."""
    x = np.clip(values, 0, 1) * (len(STOPS) - 1)
    low = np.minimum(x.astype(int), len(STOPS) - 2)
    t = (x - low)[..., None]
    return (STOPS[low] * (1 - t) + STOPS[low + 1] * t).round().astype(np.uint8)


# 3 × 5 glyphs, one string of 15 bits per character (rows top to bottom, 1 = ink).
FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "k": "100101110101101",
    "H": "101101111101101", "z": "000111010100111", "s": "000011010001110", "C": "111100100100111",
    "D": "110101101101110", "E": "111100111100111", "F": "111100111100100", "G": "111100101101111",
    "A": "010101111101101", "B": "110101110101110", "#": "101111101111101", " ": "000000000000000",
}


def draw_text(image: np.ndarray, text: str, row: int, col: int, scale: int = 2, colour=(230, 230, 230)):
    """Draw `text` into image (H, W, 3) with its top-left corner at (row, col), in place."""
    for i, char in enumerate(text):
        glyph = np.array([int(b) for b in FONT[char]], dtype=bool).reshape(5, 3)
        glyph = glyph.repeat(scale, 0).repeat(scale, 1)
        top, left = row, col + i * 4 * scale
        region = image[top:top + glyph.shape[0], left:left + glyph.shape[1]]
        region[glyph[:region.shape[0], :region.shape[1]]] = colour


def framed(picture: np.ndarray, y_ticks, x_ticks, y_unit: str, x_unit: str) -> np.ndarray:
    """The picture (h, w, 3) with tick labels on the left and below, the y unit above the y labels and
    the x unit after the last x label. Ticks are (pixel, label) pairs, rows from the picture's top."""
    h, w, _ = picture.shape
    left, top, bottom, scale = 44, 16, 20, 2
    image = np.full((top + h + bottom, left + w + 24, 3), 24, dtype=np.uint8)
    image[top:top + h, left:left + w] = picture
    for y, label in y_ticks:
        draw_text(image, label, top + y - 5, left - 6 - len(label) * 8, scale)
        image[top + y, left - 4:left] = 200
    for i, (x, label) in enumerate(x_ticks):
        label = label + (" " + x_unit if i == len(x_ticks) - 1 and x_unit else "")
        draw_text(image, label, top + h + 6, left + x - len(label.split(" ")[0]) * 4, scale)
        image[top + h:top + h + 4, left + x] = 200
    draw_text(image, y_unit, 2, 2, scale)
    return image


def nice_step(span: float, target: int = 5) -> float:
    """A round tick spacing (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`."""
    raw = span / max(target, 1)
    power = 10 ** np.floor(np.log10(raw)) if raw > 0 else 1.0
    return float(min((m * power for m in (1, 2, 5, 10)), key=lambda s: abs(s - raw)))


def number(value: float) -> str:
    return f"{value:.0f}" if abs(value - round(value)) < 1e-9 else f"{value:g}"


# ---- spectrograms and chromagrams -------------------------------------------------------------------
def spectrogram_png(wav: torch.Tensor, sample_rate: int, n_fft: int = 1024, height: int = 256,
                    dynamic_range_db: float = 80.0) -> bytes:
    """wav (N,), (1, N) or (1, 1, N) -> a PNG: log-magnitude STFT (Hann, hop n_fft / 4), 0 Hz at the
    bottom, the loudest bin white, `dynamic_range_db` below it black; ticks in kHz and seconds."""
    x = wav.detach().float().reshape(-1).cpu()
    hop = n_fft // 4
    if x.numel() < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    magnitude = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs()  # (n_fft/2+1, F)
    db = 20 * torch.log10(magnitude + 1e-8)
    db = (db - (db.max() - dynamic_range_db)) / dynamic_range_db                # [0, 1] over the range shown
    bins = db.shape[0] - 1                                                       # drop the Nyquist bin
    rows = torch.nn.functional.adaptive_avg_pool1d(db[:bins].T[None], height)[0].T  # (height, F)
    picture = colormap(rows.flip(0).numpy())                                     # low frequencies at the bottom
    hz_per_row = sample_rate / 2 / height
    step = nice_step(sample_rate / 2000) * 1000
    y_ticks = [(height - 1 - int(f / hz_per_row), number(f / 1000))
               for f in np.arange(0, sample_rate / 2, step) if f / hz_per_row < height]
    seconds = x.numel() / sample_rate
    frames = picture.shape[1]
    x_ticks = [(min(frames - 1, int(t * sample_rate / hop)), number(t)) for t in np.arange(0, seconds + 1e-9,
                                                                                          nice_step(seconds))]
    return png_bytes(framed(picture, y_ticks, x_ticks, "kHz", "s"))


NOTE_NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def chromagram_png(chroma: torch.Tensor, frame_rate: float, cell: int = 12, width: int = 6) -> bytes:
    """chroma (F, 12) or (1, F, 12), values in [0, 1] -> a PNG: pitch classes C (bottom) to B (top)
    against time in seconds, a block of cell rows × `width` columns per frame and class."""
    c = chroma.detach().float().reshape(-1, 12).cpu().numpy()  # (F, 12)
    picture = colormap(c.T[::-1]).repeat(cell, 0).repeat(width, 1)  # (12·cell, F·width, 3)
    y_ticks = [((11 - k) * cell + cell // 2, NOTE_NAMES[k]) for k in range(12) if "#" not in NOTE_NAMES[k]]
    seconds = len(c) / frame_rate
    x_ticks = [(min(picture.shape[1] - 1, int(t * frame_rate) * width), number(t))
               for t in np.arange(0, seconds + 1e-9, nice_step(seconds))]
    return png_bytes(framed(picture, y_ticks, x_ticks, "", "s"))


# ---- curves --------------------------------------------------------------------------------------------
def line_chart_svg(series: dict, x_label: str, y_label: str, title: str = "", hlines: dict = None,
                   width: int = 520, height: int = 300, log_y: bool = False, colours: dict = None,
                   dashed=()) -> str:
    """An SVG chart: series {name: (xs, ys)} as polylines, hlines {label: y} dashed, axes with ticks.
    colours {name: palette index} gives series the same colour (e.g. train and held-out of one codebook),
    `dashed` names the series drawn dashed. log_y plots log10(y) (positive values only), ticks at 1, 2, 5."""
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    legend = max((len(name) for name in series), default=0) * 7 + 24  # the legend's column, right of the plot
    pad_l, pad_r, pad_t, pad_b = 56, 12 + legend, 28 if title else 12, 40
    points = [(float(x), float(y)) for xs, ys in series.values() for x, y in zip(xs, ys) if np.isfinite(y)]
    points += [(points[0][0] if points else 0.0, float(y)) for y in (hlines or {}).values()]
    if log_y:
        points = [(x, y) for x, y in points if y > 0]
    if not points:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"></svg>'
    transform = (lambda y: np.log10(y)) if log_y else (lambda y: y)
    xs_all, ys_all = [p[0] for p in points], [transform(p[1]) for p in points]
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = min(ys_all), max(ys_all)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    margin = 0.05 * (y1 - y0)
    y0, y1 = y0 - margin, y1 + margin
    sx = lambda x: pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)
    sy = lambda y: pad_t + (1 - (transform(y) - y0) / (y1 - y0)) * (height - pad_t - pad_b)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="11"><rect width="100%" height="100%" fill="white"/>']
    if title:
        out.append(f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{title}</text>')
    x_step = nice_step(x1 - x0)
    for x in np.arange(np.ceil(x0 / x_step) * x_step, x1 + 1e-9, x_step):
        out.append(f'<line x1="{sx(x):.1f}" y1="{height - pad_b}" x2="{sx(x):.1f}" y2="{height - pad_b + 4}" stroke="black"/>'
                   f'<text x="{sx(x):.1f}" y="{height - pad_b + 16}" text-anchor="middle">{number(x)}</text>')
    if log_y:
        ticks = [m * 10.0 ** e for e in range(int(np.floor(y0)) - 1, int(np.ceil(y1)) + 1) for m in (1, 2, 5)]
        ticks = [t for t in ticks if y0 <= np.log10(t) <= y1]
    else:
        y_step = nice_step(y1 - y0)
        ticks = list(np.arange(np.ceil(y0 / y_step) * y_step, y1 + 1e-9, y_step))
    for y in ticks:
        out.append(f'<line x1="{pad_l - 4}" y1="{sy(y):.1f}" x2="{width - pad_r}" y2="{sy(y):.1f}" stroke="#e5e5e5"/>'
                   f'<text x="{pad_l - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{number(round(y, 6))}</text>')
    out.append(f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="black"/>'
               f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="black"/>')
    out.append(f'<text x="{(pad_l + width - pad_r) / 2}" y="{height - 6}" text-anchor="middle">{x_label}</text>'
               f'<text x="14" y="{(pad_t + height - pad_b) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {(pad_t + height - pad_b) / 2})">{y_label}</text>')
    for label, y in (hlines or {}).items():
        out.append(f'<line x1="{pad_l}" y1="{sy(y):.1f}" x2="{width - pad_r}" y2="{sy(y):.1f}" stroke="#555" '
                   f'stroke-dasharray="4 3"/><text x="{width - pad_r - 2}" y="{sy(y) - 3:.1f}" text-anchor="end" '
                   f'fill="#555">{label}</text>')
    for i, (name, (xs, ys)) in enumerate(series.items()):
        xy = [(sx(float(x)), sy(float(y))) for x, y in zip(xs, ys) if np.isfinite(float(y)) and (float(y) > 0 or not log_y)]
        colour = palette[(colours or {}).get(name, i) % len(palette)]
        dash = ' stroke-dasharray="5 3"' if name in dashed else ""
        out.append(f'<polyline points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in xy)}" fill="none" stroke="{colour}" '
                   f'stroke-width="1.5"{dash}/>')
        if len(xy) <= 30:  # few points (evaluations): mark each one
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{colour}"/>' for a, b in xy]
        out.append(f'<line x1="{width - legend}" y1="{pad_t + 10 + 14 * i}" x2="{width - legend + 14}" '
                   f'y2="{pad_t + 10 + 14 * i}" stroke="{colour}" stroke-width="2"{dash}/>'
                   f'<text x="{width - legend + 18}" y="{pad_t + 14 + 14 * i}" fill="#222">{name}</text>')
    out.append("</svg>")
    return "".join(out)
