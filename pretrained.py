"""Loading the published MusicGen checkpoints, part 1: reading the files, by hand.

The published facebook/musicgen-* folders are in the layout HF transformers' `save_pretrained` writes:

    config.json                      {"text_encoder": {T5 config}, "audio_encoder": {EnCodec config},
                                      "decoder": {LM config}, ...}
    model.safetensors                all weights, as one flat {name: tensor} dictionary; or, when large,
    model.safetensors.index.json     {"weight_map": {name: shard file}} and the shard files
      model-00001-of-0000N.safetensors ...
    pytorch_model.bin                the same dictionary as a torch.save pickle (older uploads)
    tokenizer.json                   T5's tokenizer (read by t5.UnigramTokenizer)

A .safetensors file is three parts, read here without the `safetensors` package:

    ┌─────────────┬───────────────────────────────────┬─────────────────────────────────────────┐
    │ N: u64, LE  │ header: N bytes of UTF-8 JSON     │ data: raw little-endian tensor bytes    │
    └─────────────┴───────────────────────────────────┴─────────────────────────────────────────┘
     bytes 0 .. 8   bytes 8 .. 8 + N                     bytes 8 + N .. end of file

    header = {"text_encoder.shared.weight": {"dtype": "F32", "shape": [32128, 768],
                                             "data_offsets": [begin, end]},   ← relative to data's start
              ...,
              "__metadata__": {"format": "pt"}}                              ← optional, free strings

A tensor is the bytes data[begin:end], row-major (C order), with end - begin = numel · itemsize.
No pickle is involved, so unlike a .bin file a .safetensors file cannot run code when read.

Names are those of HF's modules ("decoder.model.decoder.layers.0.self_attn.q_proj.weight", ...); part 2
(key mapping onto our modules) comes below, after the reading layer.

Errors: anything wrong with the files raises `PretrainedError` (a ValueError) with one line naming the
file and the problem, e.g. "…/model.safetensors: tensor 'x': truncated or corrupt: needs data bytes
0..4096 but the file has 1024 bytes of data".
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch


class PretrainedError(ValueError):
    """A checkpoint folder or file that cannot be read; the message names the file and the problem."""


# ------------------------------------------------------------------------------------------------
# 1. Reading the files
# ------------------------------------------------------------------------------------------------

# safetensors dtype names → torch dtypes. BF16 has no numpy type; torch.frombuffer reads it directly.
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
SINGLE_FILE, INDEX_FILE, TORCH_FILE, TORCH_INDEX_FILE = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def read_safetensors(path) -> dict:
    """Read a .safetensors file → {name: tensor} on CPU (each tensor owns its memory)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as e:
        raise PretrainedError(f"{path}: cannot open: {e.strerror}") from None
    with f:
        if size < 8:
            raise PretrainedError(f"{path}: truncated: {size} bytes, fewer than the 8 of the header length")
        n = int.from_bytes(f.read(8), "little")  # u64, little-endian
        if n > size - 8:
            raise PretrainedError(f"{path}: header length {n} runs past the end of the file ({size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PretrainedError(f"{path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise PretrainedError(f"{path}: header is not a JSON object")
        data_start, data_size = 8 + n, size - 8 - n
        tensors = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype, shape, begin, end = _check_entry(path, name, info, data_size)
            f.seek(data_start + begin)
            buffer = bytearray(end - begin)  # writable, so the tensor can own it without a copy
            if f.readinto(buffer) != len(buffer):  # the file shrank since stat()
                raise PretrainedError(f"{path}: tensor {name!r}: truncated while reading")
            if sys.byteorder == "big" and dtype.itemsize > 1:  # the file is little-endian
                buffer = bytearray(np.frombuffer(buffer, np.uint8).reshape(-1, dtype.itemsize)[:, ::-1].tobytes())
            flat = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
            tensors[name] = flat.reshape(shape)  # (numel,) -> shape
    return tensors


def _check_entry(path, name, info, data_size):
    """Validate one header entry → (torch dtype, shape, begin, end)."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise PretrainedError(f"{where}: header entry needs dtype, shape and data_offsets, got {info!r}")
    dtype, shape, offsets = DTYPES.get(info["dtype"]), info["shape"], info["data_offsets"]
    if dtype is None:
        raise PretrainedError(f"{where}: unsupported dtype {info['dtype']!r} (known: {', '.join(DTYPES)})")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise PretrainedError(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise PretrainedError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    begin, end = offsets
    if end > data_size:
        raise PretrainedError(f"{where}: truncated or corrupt: needs data bytes {begin}..{end} but the file "
                              f"has {data_size} bytes of data")
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise PretrainedError(f"{where}: data_offsets span {end - begin} bytes but {info['dtype']} {shape} "
                              f"needs {math.prod(shape) * dtype.itemsize}")
    return dtype, shape, begin, end


def _read_torch(path) -> dict:
    """A pytorch_model.bin: torch.save of the state dict. weights_only=True: tensors and plain containers
    only, so a malicious pickle cannot run code."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a zip or pickle error, whatever torch raises for a broken file
        raise PretrainedError(f"{path}: cannot read as a torch checkpoint ({type(e).__name__}: {e})") from None
    if not (isinstance(sd, dict) and all(isinstance(v, torch.Tensor) for v in sd.values())):
        raise PretrainedError(f"{path}: expected a flat dict of tensors, got {type(sd).__name__}")
    return sd


def _read_sharded(index_path, read) -> dict:
    """An index {"weight_map": {name: shard file}}: read each shard once, keep the names it lists."""
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise PretrainedError(f"{index_path}: not a valid index with a weight_map ({type(e).__name__}: {e})") from None
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard:  # a bare file name in the same folder, never a path elsewhere
            raise PretrainedError(f"{index_path}: shard {shard!r} is not a file name in the folder")
        if not (index_path.parent / shard).is_file():
            raise PretrainedError(f"{index_path}: shard file {shard} is missing")
        content = read(index_path.parent / shard)
        for name in (name for name, file in weight_map.items() if file == shard):
            if name not in content:
                raise PretrainedError(f"{index_path.parent / shard}: tensor {name!r}, listed in the index, is missing")
            tensors[name] = content[name]
    return tensors


def read_state_dict(folder) -> dict:
    """All weights of a `save_pretrained` folder → {HF name: tensor}, in this order of preference:
    model.safetensors; model.safetensors.index.json (+ shards); pytorch_model.bin (+ its index)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PretrainedError(f"{folder}: not a folder (expected a save_pretrained folder with {SINGLE_FILE})")
    if (folder / SINGLE_FILE).is_file():
        return read_safetensors(folder / SINGLE_FILE)
    if (folder / INDEX_FILE).is_file():
        return _read_sharded(folder / INDEX_FILE, read_safetensors)
    if (folder / TORCH_FILE).is_file():
        return _read_torch(folder / TORCH_FILE)
    if (folder / TORCH_INDEX_FILE).is_file():
        return _read_sharded(folder / TORCH_INDEX_FILE, _read_torch)
    raise PretrainedError(f"{folder}: no weights found: expected {SINGLE_FILE}, {INDEX_FILE} or {TORCH_FILE}")


def read_config(folder) -> dict:
    """config.json of a `save_pretrained` folder → dict (MusicGen: sub-dicts text_encoder, audio_encoder,
    decoder)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise PretrainedError(f"{path}: missing (expected the config.json that save_pretrained writes)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise PretrainedError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


# ------------------------------------------------------------------------------------------------
# 2. Mapping the published names onto our modules (to be added)
# ------------------------------------------------------------------------------------------------
# HF names in a MusicGen checkpoint, by prefix (tests/test_pretrained_io.py saves a tiny one):
#   text_encoder.*   T5 encoder: t5.t5_state_dict_from_hf(sd, prefix="text_encoder.")
#   audio_encoder.*  EnCodec: weight-normed convs as .weight_g/.weight_v (published files) or
#                    .parametrizations.weight.original0/original1 (saved by recent transformers), LSTMs
#                    (lstm.weight_ih_l0, ...), codebooks quantizer.layers.K.codebook.embed (+ training
#                    buffers inited, cluster_size, embed_avg)
#   decoder.*        the LM: model.decoder.{embed_tokens.K, layers.N.*, layer_norm}, lm_heads.K
#   enc_to_dec_proj  Linear T5 width → LM width (with bias), when the two differ
