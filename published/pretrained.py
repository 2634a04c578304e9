"""Loading the published MusicGen checkpoints into our own modules: reading the files by hand (part 1),
then mapping the published names onto lm.LMModel, t5.T5Encoder and encodec.EncodecModel (part 2).

The published facebook/musicgen-* folders are in the layout HF transformers' `save_pretrained` writes:

    config.json                      {"text_encoder": {T5 config}, "audio_encoder": {EnCodec config},
                                      "decoder": {LM config}, ...}
    model.safetensors                all weights, as one flat {name: tensor} dictionary; or, when large,
    model.safetensors.index.json     {"weight_map": {name: shard file}} and the shard files
      model-00001-of-0000N.safetensors ...
    pytorch_model.bin                the same dictionary as a torch.save pickle (older uploads)
    tokenizer.json                   T5's tokenizer (read by t5.UnigramTokenizer)
    preprocessor_config.json         musicgen-melody only: the chroma's n_fft, hop_length, sampling_rate

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
maps them onto ours: `load_pretrained(folder) -> (codec, lm, tokenizer)`, which musicgen.MusicGen
.from_pretrained wraps. tests/test_musicgen_hf.py checks tokens, logits and audio against HF's model.

Errors: anything wrong with the files raises `PretrainedError` (a ValueError) with one line naming the
file and the problem, e.g. "…/model.safetensors: tensor 'x': truncated or corrupt: needs data bytes
0..4096 but the file has 1024 bytes of data".
"""
import json
import math
import re
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from encodec import EncodecConfig, EncodecModel
from lm import LMConfig, LMModel, t5_config
from published.t5 import T5Config, UnigramTokenizer, t5_state_dict_from_hf


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
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise PretrainedError(f"{path}: header is not valid JSON ({type(e).__name__}: {e})") from None
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
# 2a. The published EnCodec → encodec.EncodecModel (SEANet is laid out as HF's, layer for layer)
# ------------------------------------------------------------------------------------------------
# HF EncodecConfig's defaults, which a config.json may leave out (they are transformers' 24 kHz EnCodec).
HF_DEFAULTS = dict(model_type="encodec", sampling_rate=24000, audio_channels=1, normalize=False, chunk_length_s=None,
                   hidden_size=128, num_filters=32, num_residual_layers=1, upsampling_ratios=(8, 5, 4, 2),
                   norm_type="weight_norm", kernel_size=7, last_kernel_size=7, residual_kernel_size=3,
                   dilation_growth_rate=2, use_causal_conv=True, pad_mode="reflect", compress=2, num_lstm_layers=2,
                   trim_right_ratio=1.0, codebook_size=1024, codebook_dim=None, use_conv_shortcut=True,
                   target_bandwidths=(1.5, 3.0, 6.0, 12.0, 24.0))
# The fields whose other values we do not implement, with the values we do (MusicGen's codec uses the first).
# normalize: HF divides the input by its RMS and returns that scale with the codes; ours keeps only codes.
HF_SUPPORTED = dict(model_type=("encodec",), audio_channels=(1,), normalize=(False,), chunk_length_s=(None,),
                    norm_type=("weight_norm",), use_causal_conv=(False,), trim_right_ratio=(1.0,),
                    pad_mode=("reflect", "constant", "replicate"))
HF_CODEBOOK = {"codebook": "embed", "embed_sum": "embed_avg", "cluster_size": "cluster_size", "initialized": "inited"}
HF_WEIGHT_NORM = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def hf_names(name: str) -> list:
    """HF's spellings of one of our tensor names, today's first:
    "quantizer.layers.0.embed_sum" -> ["quantizer.layers.0.codebook.embed_avg"],
    "….conv.parametrizations.weight.original0" -> ["….conv.parametrizations.weight.original0", "….conv.weight_g"]."""
    head, _, leaf = name.rpartition(".")
    if name.startswith("quantizer."):
        return [f"{head}.codebook.{HF_CODEBOOK[leaf]}"]
    for new, old in HF_WEIGHT_NORM.items():
        if name.endswith(new):
            return [name, name[:-len(new)] + old]
    return [name]


def encodec_config_from_hf(config: dict) -> EncodecConfig:
    """From HF's EncodecConfig as a dict (config.json["audio_encoder"] of a MusicGen folder). A field
    it lacks means HF's default (HF_DEFAULTS); a value we cannot reproduce raises ValueError naming it.
    n_q is every codebook the model has (HF's encode defaults to its lowest target bandwidth; the
    MusicGen codecs list only one)."""
    c = {**HF_DEFAULTS, **config}
    for field, allowed in {**HF_SUPPORTED, "codebook_dim": (None, c["hidden_size"])}.items():
        if c[field] not in allowed:
            raise ValueError(f"EnCodec config: {field}={c[field]!r} is not supported "
                             f"(only {' or '.join(map(repr, allowed))})")
    ratios = tuple(c["upsampling_ratios"])
    # HF derives the number of codebooks from the highest bitrate: K = ⌊kbps·1000 / (⌈frame rate⌉·bits)⌋.
    bits_per_second = math.ceil(c["sampling_rate"] / math.prod(ratios)) * math.ceil(math.log2(c["codebook_size"]))
    n_q = int(1000 * c["target_bandwidths"][-1] // bits_per_second)
    if n_q < 1:
        raise ValueError(f"EnCodec config: target_bandwidths={c['target_bandwidths']} gives no codebook")
    return EncodecConfig(sample_rate=c["sampling_rate"], n_filters=c["num_filters"], ratios=ratios,
                         dimension=c["hidden_size"], n_residual_layers=c["num_residual_layers"],
                         lstm_layers=c["num_lstm_layers"], n_q=n_q,
                         codebook_size=c["codebook_size"], kernel_size=c["kernel_size"], last_kernel_size=c["last_kernel_size"],
                         residual_kernel_size=c["residual_kernel_size"], dilation_growth_rate=c["dilation_growth_rate"],
                         compress=c["compress"], use_conv_shortcut=bool(c["use_conv_shortcut"]), pad_mode=c["pad_mode"])


def encodec_from_hf(config: dict, state_dict: dict) -> EncodecModel:
    """The codec of a HF `transformers.EncodecModel` (e.g. MusicGen's 32 kHz EnCodec), in eval mode.

    Args:
        config: HF's EncodecConfig as a dict (config.json["audio_encoder"]; see encodec_config_from_hf).
        state_dict: that model's tensors, "audio_encoder." prefix removed. Our module tree is HF's,
            layer for layer, so the names agree except two spellings (hf_names): weight norm as
            weight_g / weight_v (the published files) or parametrizations.weight.original0 / 1
            (today's), and the codebooks' buffers quantizer.layers.K.codebook.{embed, embed_avg,
            cluster_size, inited}.
    An unsupported config field, or an unknown, missing or misshaped key, raises ValueError naming it.
    """
    model = EncodecModel(encodec_config_from_hf(config))
    names = {ours: hf_names(ours) for ours in model.state_dict()}  # ours -> HF's spellings
    known = {name for spellings in names.values() for name in spellings}
    unknown = [key for key in state_dict if key not in known]
    if unknown:
        raise ValueError(f"EnCodec state_dict: unexpected key {unknown[0]!r}")
    weights = {}
    for ours, target in model.state_dict().items():
        found = [name for name in names[ours] if name in state_dict]
        if len(found) != 1:
            raise ValueError(f"EnCodec state_dict: {'both spellings of' if found else 'missing'} {names[ours][0]!r}")
        value = state_dict[found[0]]
        if ours.endswith(".initialized") and value.numel() == 1:
            value = value.reshape(()).bool()  # HF keeps the flag as a float tensor [1.]
        if value.shape != target.shape:
            raise ValueError(f"EnCodec state_dict: {found[0]!r} has shape {tuple(value.shape)}, "
                             f"the config gives {tuple(target.shape)}")
        weights[ours] = value.to(target.dtype)
    model.load_state_dict(weights)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# 2. The published names → our modules
# ------------------------------------------------------------------------------------------------
# HF names in a MusicGen checkpoint, by prefix, and where they go:
#   text_encoder.*   T5 encoder          → lm.text_encoder.t5          (t5.t5_state_dict_from_hf)
#   enc_to_dec_proj  Linear T5 width → LM width, with a bias; absent when the two widths agree
#                                        → lm.text_encoder.projection  (then the identity)
#   audio_enc_to_dec_proj  Linear 12 chroma bins → LM width, with a bias (musicgen-melody only)
#                                        → lm.melody_projection
#   audio_encoder.*  EnCodec             → encodec_from_hf (weight_g / weight_v or
#                    parametrizations.weight.original0 / original1, LSTMs, codebooks)
#   decoder.*        the LM              → lm.LMModel, by the table below

# HF decoder name → (our name, the regex group saying which part of it). The K embedding tables and
# the K heads map one to one; ours stacks what HF keeps apart in one place: W_K and W_V in one to_kv
# matrix (parts k, v, concatenated along dim 0 in order). Group None: copied as is.
LAYER = r"decoder\.model\.decoder\.layers\.(\d+)\."
BLOCK = r"transformer.blocks.\1."
DECODER_KEYS = [
    (r"decoder\.model\.decoder\.embed_tokens\.(\d+)\.weight", r"embeddings.\1.weight", None),
    (LAYER + r"self_attn\.q_proj\.weight", BLOCK + "self_attention.to_q.weight", None),
    (LAYER + r"self_attn\.([kv])_proj\.weight", BLOCK + "self_attention.to_kv.weight", 2),
    (LAYER + r"self_attn\.out_proj\.weight", BLOCK + "self_attention.to_out.weight", None),
    (LAYER + r"self_attn_layer_norm\.(weight|bias)", BLOCK + r"norm_self.\2", None),
    (LAYER + r"encoder_attn\.q_proj\.weight", BLOCK + "cross_attention.to_q.weight", None),
    (LAYER + r"encoder_attn\.([kv])_proj\.weight", BLOCK + "cross_attention.to_kv.weight", 2),
    (LAYER + r"encoder_attn\.out_proj\.weight", BLOCK + "cross_attention.to_out.weight", None),
    (LAYER + r"encoder_attn_layer_norm\.(weight|bias)", BLOCK + r"norm_cross.\2", None),
    (LAYER + r"fc1\.weight", BLOCK + "ffn.0.weight", None),
    (LAYER + r"fc2\.weight", BLOCK + "ffn.2.weight", None),
    (LAYER + r"final_layer_norm\.(weight|bias)", BLOCK + r"norm_ffn.\2", None),
    (r"decoder\.model\.decoder\.layer_norm\.(weight|bias)", r"transformer.norm_out.\1", None),
    (r"decoder\.lm_heads\.(\d+)\.weight", r"heads.\1.weight", None),
    (r"enc_to_dec_proj\.(weight|bias)", r"text_encoder.projection.\1", None),
    (r"audio_enc_to_dec_proj\.(weight|bias)", r"melody_projection.\1", None),  # musicgen-melody: chroma → D
]
PREFIXES = ("text_encoder.", "audio_encoder.", "decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj.")
# Files written by transformers of 2023 (the published ones) also hold the sinusoidal position table,
# then a frozen parameter. It is computed, not learned: HF ignores it on load and so do we.
IGNORED = r"decoder\.model\.decoder\.embed_positions\.weights"


def lm_state_dict_from_hf(sd: dict) -> dict:
    """HF `decoder.*`, `enc_to_dec_proj.*` and `audio_enc_to_dec_proj.*` tensors → `LMModel` state dict
    entries (load_pretrained adds T5's)."""
    out, parts = {}, {}
    for key, value in sd.items():
        if not key.startswith(PREFIXES[2:]) or re.fullmatch(IGNORED, key):
            continue
        match, ours, group = next(((m, o, g) for p, o, g in DECODER_KEYS if (m := re.fullmatch(p, key))),
                                  (None, None, None))
        if match is None:
            raise PretrainedError(f"unexpected weight {key!r}: not a part of MusicGen's decoder")
        if group is None:
            out[match.expand(ours)] = value
        else:
            part = match.group(group)
            parts.setdefault(match.expand(ours), {})["kv".index(part)] = value
    for name, pieces in parts.items():
        if sorted(pieces) != list(range(len(pieces))):
            raise PretrainedError(f"{name}: the parts read are {sorted(pieces)}, not 0..{len(pieces) - 1}")
        out[name] = torch.cat([pieces[i] for i in range(len(pieces))])  # n × (rows, D) -> (n · rows, D)
    return out


MODEL_TYPES = ("musicgen", "musicgen_melody")  # the text-to-music models; the melody model


def supported_configs(config: dict, where) -> tuple:
    """→ the (text_encoder, audio_encoder, decoder) sub-configs, or PretrainedError naming what this code
    does not implement: another text encoder or activation, another start token, more than 2 channels."""
    kind = config.get("model_type")
    if kind not in MODEL_TYPES:
        raise PretrainedError(f"{where}: model_type {kind!r} is not supported, only {' or '.join(map(repr, MODEL_TYPES))}")
    subs = [config.get(name) for name in ("text_encoder", "audio_encoder", "decoder")]
    if not all(isinstance(sub, dict) for sub in subs):
        raise PretrainedError(f"{where}: needs the sub-configs text_encoder, audio_encoder and decoder")
    text, audio, decoder = subs
    if (text.get("model_type"), audio.get("model_type")) != ("t5", "encodec"):
        raise PretrainedError(f"{where}: needs a T5 text encoder and an EnCodec audio encoder, got "
                              f"{text.get('model_type')!r} and {audio.get('model_type')!r}")
    if decoder.get("audio_channels", 1) not in (1, 2) or audio.get("audio_channels", 1) != 1:
        raise PretrainedError(f"{where}: audio_channels must be 1 or 2 for the decoder (mono or stereo) and 1 for "
                              f"EnCodec (a stereo model codes each channel with the mono codec)")
    missing = [k for k in ("vocab_size", "num_codebooks", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "ffn_dim") if not isinstance(decoder.get(k), int) or decoder[k] < 1]
    if missing:
        raise PretrainedError(f"{where}: decoder needs positive integers {', '.join(missing)}")
    if decoder.get("activation_function", "gelu") != "gelu":
        raise PretrainedError(f"{where}: decoder activation {decoder['activation_function']!r} is not supported, only 'gelu'")
    special = decoder["vocab_size"]  # the pattern's empty token is codebook_size, here as in the reference
    if any(decoder.get(k, special) != special for k in ("pad_token_id", "bos_token_id")):
        raise PretrainedError(f"{where}: decoder pad/bos token must be vocab_size ({special}), got "
                              f"{decoder.get('pad_token_id')} / {decoder.get('bos_token_id')}")
    if decoder.get("cross_attention_hidden_size") not in (None, decoder["hidden_size"]):
        raise PretrainedError(f"{where}: cross_attention_hidden_size must be unset or the decoder width")
    if kind == "musicgen_melody" and (config.get("num_chroma", 12) != 12 or not isinstance(config.get("chroma_length"), int)):
        raise PretrainedError(f"{where}: a melody model needs num_chroma 12 and an integer chroma_length")
    return text, audio, decoder


def read_chroma_sizes(folder, sample_rate: int) -> dict:
    """preprocessor_config.json of a melody model → the chroma's LMConfig fields. Its sampling_rate must be
    the codec's: our chroma runs on the audio at the codec's rate (the reference resamples to its own)."""
    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        raise PretrainedError(f"{path}: missing (a melody model's chroma sizes: sampling_rate, n_fft, hop_length)")
    try:
        pre = json.loads(path.read_text(encoding="utf-8"))
        n_fft, hop, rate = pre["n_fft"], pre["hop_length"], pre["sampling_rate"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise PretrainedError(f"{path}: needs JSON with n_fft, hop_length and sampling_rate ({type(e).__name__}: {e})") from None
    if not all(isinstance(v, int) and v > 0 for v in (n_fft, hop, rate)) or rate != sample_rate:
        raise PretrainedError(f"{path}: n_fft {n_fft}, hop_length {hop}, sampling_rate {rate}: need positive "
                              f"integers and the codec's rate {sample_rate}")
    if pre.get("num_chroma", 12) != 12:
        raise PretrainedError(f"{path}: num_chroma must be 12, got {pre.get('num_chroma')}")
    return dict(chroma_n_fft=n_fft, chroma_hop_length=hop)


def load_pretrained(folder, device="cpu", dtype=None, changes=None) -> tuple:
    """A published MusicGen folder → (codec, lm, tokenizer) in our modules, in eval mode.

    Args:
        folder: a local save_pretrained folder of MusicgenForConditionalGeneration (config.json,
            weights, tokenizer.json), e.g. facebook/musicgen-small downloaded, or of
            MusicgenMelodyForConditionalGeneration (facebook/musicgen-melody; also preprocessor_config.json).
        device: where the models go. dtype: the LM's floating dtype (None: float32); the codec and
            the chroma filters stay float32. changes: LMConfig fields that do not change a shape (a
            fine-tune's window, dropout, ...: published/finetune.py), set as the LM is built.
    Returns:
        codec (encodec.EncodecModel), lm (lm.LMModel with the frozen T5), tokenizer (t5.UnigramTokenizer).
    Raises:
        PretrainedError, one line, for a missing or broken folder or a model this code does not implement.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PretrainedError(f"{folder}: not a folder (expected a MusicGen folder written by save_pretrained)")
    config = read_config(folder)
    _, audio, _ = supported_configs(config, folder / "config.json")
    chroma_sizes = (read_chroma_sizes(folder, audio.get("sampling_rate")) if config["model_type"] == "musicgen_melody"
                    else None)
    try:
        tokenizer = UnigramTokenizer.from_file(folder / "tokenizer.json")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PretrainedError(f"{folder / 'tokenizer.json'}: cannot read T5's tokenizer ({first_line(error)})") from None
    codec, lm = models_from_hf(config, read_state_dict(folder), chroma_sizes, where=folder, changes=changes)
    return codec.to(device).eval(), lm.to(device, dtype).eval(), tokenizer  # the chroma's filters stay float32


def models_from_hf(config: dict, sd: dict, chroma_sizes=None, where="weights", changes=None) -> tuple:
    """HF's config dict and state dict (from a folder, or from a model in memory: experiments/benchmark.py) → our
    (codec, lm) in float32. chroma_sizes: read_chroma_sizes' dict, for a melody model; changes: as load_pretrained's."""
    text, audio, decoder = supported_configs(config, where)
    melody = config["model_type"] == "musicgen_melody"
    unknown = [key for key in sd if not key.startswith(PREFIXES)]
    if unknown:
        raise PretrainedError(f"{where}: unexpected weight {unknown[0]!r} (not text_encoder, audio_encoder or decoder)")
    try:
        codec = encodec_from_hf(audio, {k[len("audio_encoder."):]: v for k, v in sd.items()
                                if k.startswith("audio_encoder.")})
        channels = decoder.get("audio_channels", 1)  # stereo: the decoder reads the K codebooks of each channel
        if (codec.n_q * channels, codec.codebook_size) != (decoder["num_codebooks"], decoder["vocab_size"]):
            raise ValueError(f"the codec has {codec.n_q} codebooks of {codec.codebook_size} ({channels} channel(s)), "
                             f"the decoder reads {decoder['num_codebooks']} of {decoder['vocab_size']}")
        # The text model cross-attends to the text and has no melody input; the melody model prepends
        # both, the chroma frames first (lm.py, "Where each condition enters the decoder").
        fusions = (dict(text_fusion="prepend", melody_fusion="prepend", **chroma_sizes)
                   if melody else dict(text_fusion="cross", melody_fusion="none"))
        cfg = LMConfig(n_q=decoder["num_codebooks"], audio_channels=channels, codebook_size=codec.codebook_size,
                       frame_rate=codec.frame_rate,
                       sample_rate=codec.sample_rate, dim=decoder["hidden_size"], n_layers=decoder["num_hidden_layers"],
                       n_heads=decoder["num_attention_heads"], ffn_dim=decoder["ffn_dim"], text_encoder="t5",
                       text_vocab_size=text.get("vocab_size", 32128), text_dim=text.get("d_model", 768),
                       text_layers=text.get("num_layers", 12), text_heads=text.get("num_heads", 12), **fusions)
        if T5Config.from_hf(text) != t5_config(cfg):
            raise ValueError(f"T5 {T5Config.from_hf(text)} is not T5's standard layout {t5_config(cfg)}")
        with init_skipped():  # every weight is about to be replaced: allocate, never write, the random ones
            lm = LMModel(replace(cfg, **(changes or {})))
        frames = lm.chroma(torch.zeros(1, 1, round(cfg.window_seconds * cfg.sample_rate))).shape[1] if melody else 0
        if melody and config["chroma_length"] != frames:  # F of the published 30 s window
            raise ValueError(f"chroma_length {config['chroma_length']} is not the {frames} chroma frames "
                             f"of a {cfg.window_seconds:g} s window")
        weights = lm_state_dict_from_hf(sd)
        weights |= {"text_encoder.t5." + k: v for k, v in t5_state_dict_from_hf(sd, prefix="text_encoder.").items()}
        if "text_encoder.projection.weight" not in weights and cfg.text_dim == cfg.dim:
            # Equal widths: the reference has no projection, i.e. the identity (exact: x · 1 + 0).
            weights["text_encoder.projection.weight"] = torch.eye(cfg.dim)
            weights["text_encoder.projection.bias"] = torch.zeros(cfg.dim)
        expected = lm.state_dict()
        missing, extra = sorted(expected.keys() - weights.keys()), sorted(weights.keys() - expected.keys())
        misshaped = [k for k in weights.keys() & expected.keys() if weights[k].shape != expected[k].shape]
        if missing or extra or misshaped:
            name = (missing or extra or misshaped)[0]
            raise ValueError(f"missing weight for our {name}" if missing else f"no place for weight {name}" if extra
                             else f"{name} is {tuple(weights[name].shape)}, ours {tuple(expected[name].shape)}")
        # Every weight of ours filled, no published one left over; assign: the read tensors become the
        # parameters (no copy), so the published weights are in memory once.
        lm.load_state_dict(weights, assign=True)
    except PretrainedError:
        raise
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise PretrainedError(f"{where}: does not fit our MusicGen ({first_line(error)})") from None
    return codec.eval(), lm.eval()


@contextmanager
def init_skipped():
    """Within it, torch.nn.init's fills do nothing: a model built to be overwritten by published weights
    allocates its parameters but never writes them, and untouched memory is not resident (a 530M model's
    random init would otherwise double the peak memory of loading it)."""
    names = ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
             "trunc_normal_", "zeros_", "ones_", "constant_")
    saved = {name: getattr(torch.nn.init, name) for name in names}
    for name in names:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def first_line(error: Exception) -> str:
    """`Type: first line of the message`, for one-line errors."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
