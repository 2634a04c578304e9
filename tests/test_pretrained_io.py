"""Reading checkpoint folders (pretrained.py): safetensors by hand, shards, .bin, and clear errors.

The reference is a tiny random HF MusicgenForConditionalGeneration saved with `save_pretrained` (the
layout of the published facebook/musicgen-* folders), and the `safetensors` package's own writer.
Nothing is downloaded.
"""
import json
import shutil

import pytest
import torch

from published.pretrained import PretrainedError, read_config, read_safetensors, read_state_dict


def tiny_musicgen():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    text = transformers.T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    # Codebooks: 1000 · bandwidth // (frame rate · log2 codebook_size) = 60000 // (6000 · 5) = 2.
    audio = transformers.EncodecConfig(target_bandwidths=[60.0], hidden_size=16, num_filters=4,
                                       upsampling_ratios=[2, 2], codebook_size=32, codebook_dim=16, num_lstm_layers=2)
    decoder = transformers.MusicgenDecoderConfig(vocab_size=32, max_position_embeddings=64, num_hidden_layers=2,
                                                 ffn_dim=64, num_attention_heads=4, hidden_size=16, num_codebooks=2,
                                                 pad_token_id=32, bos_token_id=32)
    # Older transformers build the config with MusicgenConfig.from_sub_models_config(text, audio, decoder).
    config = transformers.MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
    return transformers.MusicgenForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny MusicGen saved three ways: one model.safetensors, shards + index, pytorch_model.bin."""
    model = tiny_musicgen()
    root = tmp_path_factory.mktemp("musicgen")
    model.save_pretrained(root / "single")
    model.save_pretrained(root / "sharded", max_shard_size="20KB")
    # transformers 5 always writes safetensors (safe_serialization=False is gone): write the .bin by hand,
    # as older versions did - torch.save of the state dict.
    (root / "bin").mkdir()
    shutil.copy(root / "single" / "config.json", root / "bin" / "config.json")
    torch.save(model.state_dict(), root / "bin" / "pytorch_model.bin")
    return model, root


def assert_same_as_model(sd, model):
    expected = model.state_dict()
    # Tied weights are saved once: T5's encoder.embed_tokens is shared.weight.
    assert set(expected) - set(sd) <= {"text_encoder.encoder.embed_tokens.weight"}
    assert set(sd) <= set(expected)
    for name, tensor in sd.items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name


def test_single_file_equals_the_model_and_the_reference_reader(saved):
    model, root = saved
    sd = read_state_dict(root / "single")
    assert_same_as_model(sd, model)
    reference = pytest.importorskip("safetensors.torch").load_file(root / "single" / "model.safetensors")
    assert sd.keys() == reference.keys() and all(torch.equal(sd[k], reference[k]) for k in sd)
    # Every part is there: T5, EnCodec (weight-normed convs, LSTMs, codebooks), the LM, the projection.
    for name in ["text_encoder.shared.weight", "audio_encoder.encoder.layers.0.conv.bias",
                 "audio_encoder.decoder.layers.1.lstm.weight_ih_l0", "audio_encoder.quantizer.layers.1.codebook.embed",
                 "decoder.model.decoder.embed_tokens.1.weight", "decoder.lm_heads.1.weight", "enc_to_dec_proj.bias"]:
        assert name in sd, name
    # Weight norm: published (2023) files say .weight_g / .weight_v; recent transformers + torch save the
    # torch.nn.utils.parametrizations names. Either way g (magnitude) and v (direction) are stored.
    assert any(name.endswith((".weight_g", ".parametrizations.weight.original0")) for name in sd)
    config = read_config(root / "single")
    assert config["decoder"]["num_codebooks"] == 2 and config["text_encoder"]["d_model"] == 32
    assert config["audio_encoder"]["model_type"] == "encodec"


def test_sharded_folder_reads_the_same(saved):
    model, root = saved
    index = json.loads((root / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (root / "sharded" / "model.safetensors").exists()
    sd = read_state_dict(root / "sharded")
    assert sd.keys() == read_state_dict(root / "single").keys()
    assert_same_as_model(sd, model)


def test_pytorch_bin_fallback_reads_the_same(saved):
    model, root = saved
    sd = read_state_dict(root / "bin")
    assert_same_as_model(sd, model)


def test_every_dtype_and_shape(tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file
    torch.manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 3).bfloat16(),
        "f64": torch.randn(2).double(), "i64": torch.arange(-3, 3),
        "i32": torch.arange(6, dtype=torch.int32).view(2, 3),
        "i16": torch.tensor([-2, 7], dtype=torch.int16), "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8), "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4),
    }
    save_file(tensors, tmp_path / "all.safetensors", metadata={"format": "pt"})
    got = read_safetensors(tmp_path / "all.safetensors")
    assert got.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape and torch.equal(got[name], tensor)


def write_safetensors(path, header: dict, data: bytes):
    """By hand: u64 header length, JSON header, data (to make broken files)."""
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def test_broken_safetensors_raise_one_clear_error(tmp_path):
    ok = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    cases = {
        "short": (b"\x01\x02", "truncated: 2 bytes"),
        "long_header": ((10 ** 6).to_bytes(8, "little") + b"{}", "header length 1000000 runs past the end"),
        "not_json": ((3).to_bytes(8, "little") + b"{x}", "header is not valid JSON"),
    }
    for name, (raw, message) in cases.items():
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(PretrainedError, match=message):
            read_safetensors(tmp_path / name)
    truncated = write_safetensors(tmp_path / "t.safetensors", ok, b"\0" * 5)
    message = r"t\.safetensors: tensor 'w': truncated or corrupt: needs data bytes 0\.\.8 but the file has 5"
    with pytest.raises(PretrainedError, match=message):
        read_safetensors(truncated)
    for entry, message in [({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, "needs 12"),
                           ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "data_offsets must be"),
                           ({"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}, "unsupported dtype 'C64'"),
                           ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "shape must be")]:
        with pytest.raises(PretrainedError, match=message):
            read_safetensors(write_safetensors(tmp_path / "bad.safetensors", {"w": entry}, b"\0" * 8))
    with pytest.raises(PretrainedError, match="cannot open"):
        read_safetensors(tmp_path / "nowhere.safetensors")
    assert read_safetensors(write_safetensors(tmp_path / "ok.safetensors", ok, b"\0" * 8))["w"].tolist() == [0, 0]


def test_truncated_checkpoint_in_a_folder(saved, tmp_path):
    _, root = saved
    folder = tmp_path / "cut"
    shutil.copytree(root / "single", folder)
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(PretrainedError, match=r"model\.safetensors: tensor '.*': truncated or corrupt"):
        read_state_dict(folder)


def test_broken_folders_raise_one_clear_error(tmp_path):
    with pytest.raises(PretrainedError, match="not a folder"):
        read_state_dict(tmp_path / "missing")
    with pytest.raises(PretrainedError, match="config.json: missing"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text('{"decoder": ')
    with pytest.raises(PretrainedError, match=r"config\.json: not valid JSON"):
        read_config(tmp_path)
    with pytest.raises(PretrainedError, match="no weights found: expected model.safetensors"):
        read_state_dict(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"w": "model-00001-of-00002.safetensors"}}')
    with pytest.raises(PretrainedError, match="shard file model-00001-of-00002.safetensors is missing"):
        read_state_dict(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"w": "../elsewhere.safetensors"}}')
    with pytest.raises(PretrainedError, match="is not a file name in the folder"):
        read_state_dict(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a zip")
    with pytest.raises(PretrainedError, match="pytorch_model.bin: cannot read as a torch checkpoint"):
        read_state_dict(tmp_path)


def test_fuzzed_safetensors_files_give_one_clear_error_never_another_exception(tmp_path, fuzz_cases):
    """Seeded fuzz of the header reader: random bytes, a valid file truncated anywhere or with bytes
    flipped, headers claiming huge lengths, shapes and offsets, and deep nesting. Each read returns
    tensors or raises PretrainedError: no other exception, and no allocation beyond the file's size
    (a claimed size past the file is refused before anything is allocated)."""
    valid_path = tmp_path / "valid.safetensors"
    write_safetensors(valid_path, {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                                   "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]}}, bytes(range(40)))
    cases = fuzz_cases(valid_path.read_bytes(), n=200, max_flips=5, max_random=64)
    huge = 2 ** 62
    for header in ({"w": {"dtype": "F32", "shape": [huge, huge], "data_offsets": [0, huge]}},
                   {"w": {"dtype": "F32", "shape": [huge], "data_offsets": [0, 4 * huge]}},
                   {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}},
                   {"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}):
        text = json.dumps(header).encode()
        cases.append(len(text).to_bytes(8, "little") + text + bytes(16))
    cases.append(huge.to_bytes(8, "little") + b"{}")  # a header length of 2^62 bytes
    nested = b"[" * 100_000 + b"]" * 100_000  # as a header: the length prefix, then the nesting
    cases.append(len(nested).to_bytes(8, "little") + nested)
    path = tmp_path / "fuzz.safetensors"
    for i, case in enumerate(cases):
        path.write_bytes(case)
        try:
            tensors = read_safetensors(path)
        except PretrainedError as error:
            assert len(str(error).splitlines()) == 1, (i, str(error))
        else:
            assert sum(t.numel() * t.element_size() for t in tensors.values()) <= len(case), i
