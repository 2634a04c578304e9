"""pictures.py and page.py: the PNG writer read back by a decoder written here from the format, a
spectrogram whose axis puts a tone where it is, an SVG that parses, and the training page's HTML. The
pages in a real browser: tests/test_pages.py (slow, needs Chromium)."""
import math
import struct
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import torch

import page
import pictures


def read_png(data: bytes) -> np.ndarray:
    """The PNG format read back, from the specification: signature, chunks with their CRC-32, IHDR,
    the IDAT stream inflated, one filter byte (0 here) per row."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        length, = struct.unpack(">I", data[position:position + 4])
        kind, body = data[position + 4:position + 8], data[position + 8:position + 8 + length]
        crc, = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind}"
        chunks[kind] = chunks.get(kind, b"") + body
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour, interlace) == (8, 2, 0) and b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()  # filter type 0 on every row
    return rows[:, 1:].reshape(height, width, 3)


def test_the_png_writer_round_trips_an_image():
    generator = np.random.default_rng(0)
    image = generator.integers(0, 256, (7, 13, 3), dtype=np.uint8)
    assert np.array_equal(read_png(pictures.png_bytes(image)), image)


def test_a_tone_sits_at_its_frequency_on_the_spectrogram():
    """A 2 kHz sine at 16 kHz: the brightest row of the picture is 2 kHz on its axis (0 Hz at the
    bottom, 8 kHz at the top, `height` rows)."""
    sr, height = 16000, 256
    t = torch.arange(sr) / sr
    image = read_png(pictures.spectrogram_png(0.5 * torch.sin(2 * math.pi * 2000 * t), sr, height=height))
    brightness = image[..., :].astype(float).sum(-1)  # (H, W) of the whole framed picture
    rows = brightness[:, image.shape[1] // 2]  # one column in the middle of the plot
    top = 16  # the frame's top margin (pictures.framed)
    brightest = int(np.argmax(rows[top:top + height]))
    hz = (height - 1 - brightest) * (sr / 2 / height)
    assert abs(hz - 2000) <= 2 * sr / 2 / height, hz


def test_the_chromagram_has_a_row_per_pitch_class():
    chroma = torch.zeros(10, 12)
    chroma[:, 9] = 1.0  # A in every frame
    image = read_png(pictures.chromagram_png(chroma, frame_rate=7.8, cell=12, width=6))
    plot = image[16:16 + 12 * 12, 44:44 + 60].astype(float).sum(-1)  # (144, 60): the cells
    bright_rows = np.unique(np.nonzero(plot > plot.max() * 0.9)[0] // 12)
    assert bright_rows.tolist() == [11 - 9]  # C at the bottom: A is the third row from the top


def test_the_line_chart_is_svg_with_its_labels():
    svg = pictures.line_chart_svg({"train": ([1, 2, 3], [5.0, 4.0, 3.5]), "held-out": ([1, 3], [5.2, 4.1])},
                                  "step", "cross-entropy (nats)", title="LM", hlines={"chance": math.log(256)})
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert {"step", "cross-entropy (nats)", "LM", "train", "held-out", "chance"} <= set(texts)
    assert len(list(root.iter("{http://www.w3.org/2000/svg}polyline"))) == 2


def test_the_training_page_shows_curves_and_a_picture_beside_every_player(tmp_path):
    page.start(tmp_path, [("LMConfig", "dim", 128, 1024)], "k1 . t0", "run")
    page.record(tmp_path, "codec", [[1, 5.0, 2.0, None], [2, 4.0, 1.8, [50.0, 40.0]]], dict(step=2, mel_distance=3.0),
                codebook_size=256)
    page.record(tmp_path, "lm", [[1, 5.5, [5.5, 5.4]], [2, 5.0, [5.0, 5.1]]], dict(step=2, heldout=[5.2, 5.3]),
                codebook_size=256, tokens_per_second=1000.0)
    page.record(tmp_path, "lm", [[2, 4.0, [4.0, 4.1]], [3, 3.9, [3.9, 4.0]]])  # a resumed run repeats step 2
    wav = torch.sin(torch.arange(8000) / 5.0)[None]
    page.reconstructions(tmp_path, [wav], [wav * 0.5], 16000)
    state = page.load(tmp_path)
    assert [row[0] for row in state["lm"]["rows"]] == [1, 2, 3] and state["lm"]["rows"][1][1] == 4.0
    text = (tmp_path / "index.html").read_text()
    assert text.count("<audio") == 2 and text.count("<img") == 2 and text.count("<svg") >= 4
    assert "ln 256" in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    for item in state["reconstructions"][0]:
        assert (tmp_path / item["png"]).is_file() and (tmp_path / item["wav"]).is_file()


def test_a_long_run_keeps_its_curves_small_and_its_latest_steps_whole():
    rows = page.merge([], [[step, 1.0] for step in range(1, 100_001)])
    steps = [row[0] for row in rows]
    assert len(rows) <= page.MAX_ROWS and steps == sorted(steps) and steps[0] == 1
    assert steps[-1000:] == list(range(99_001, 100_001))  # the newest rows at full resolution
