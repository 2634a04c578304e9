"""T5 text encoder and tokenizer (t5.py) against HF transformers / tokenizers, on tiny random models.

The reference libraries are test-only dependencies (requirements-dev.txt); tests that need them skip
without them. Nothing is downloaded: the models have random weights, the vocabulary is made by hand.
"""
import functools
import io
import json
import random

import pytest
import torch

from published.t5 import T5Config, T5Encoder, UnigramTokenizer, relative_position_bucket, t5_state_dict_from_hf

MARK = "\u2581"


# ------------------------------------------------------------------------------------------------
# Encoder
# ------------------------------------------------------------------------------------------------

def hf_t5(**overrides):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    config.update(overrides)
    return transformers.T5EncoderModel(transformers.T5Config(**config)).eval()


def ours_from(reference, prefix=""):
    model = T5Encoder(T5Config.from_hf(reference.config.to_dict())).eval()
    sd = {prefix + key: value for key, value in reference.state_dict().items()}
    model.load_state_dict(t5_state_dict_from_hf(sd, prefix=prefix))  # strict: every weight mapped
    return model


@pytest.mark.parametrize("overrides", [
    {},  # T5-base's buckets (32, 128): distances here fall in the exact and first log buckets
    {"relative_attention_num_buckets": 8, "relative_attention_max_distance": 12},  # reaches the cap
    {"feed_forward_proj": "gated-gelu"},
], ids=["relu", "few-buckets", "gated-gelu"])
def test_encoder_matches_hf_with_padding(overrides):
    reference = hf_t5(**overrides)
    ours = ours_from(reference)
    torch.manual_seed(1)
    ids = torch.randint(3, 100, (2, 40))
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 23:] = False  # the second sequence is shorter: padded keys must be ignored
    ids[1, 23:] = 0
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        got = ours(ids, mask)
    assert got.shape == (2, 40, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_relative_position_bucket_matches_hf():
    transformers = pytest.importorskip("transformers")
    relative = torch.arange(-300, 301)[None, :]
    for buckets, distance in [(32, 128), (8, 12)]:
        expected = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
            relative, bidirectional=True, num_buckets=buckets, max_distance=distance)
        assert torch.equal(relative_position_bucket(relative, buckets, distance), expected)
    # By hand, T5-base: 0..7 exact, then logarithmic, >= 128 all in 15; +16 for keys on the right.
    got = relative_position_bucket(torch.tensor([0, -1, 1, -7, -8, -127, -128, -1000, 1000]))
    assert got.tolist() == [0, 1, 17, 7, 8, 15, 15, 15, 31]


def test_musicgen_prefix_and_tied_embedding_are_mapped():
    reference = hf_t5()
    sd = {"text_encoder." + key: value for key, value in reference.state_dict().items()}
    sd["decoder.lm_heads.0.weight"] = torch.zeros(3)  # other modules of a MusicGen checkpoint: ignored
    mapped = t5_state_dict_from_hf(sd, prefix="text_encoder.")
    assert torch.equal(mapped["embedding.weight"], reference.shared.weight)
    assert "relative_attention_bias.weight" in mapped and "blocks.1.feed_forward.wo.weight" in mapped
    with pytest.raises(ValueError, match="unexpected key"):
        t5_state_dict_from_hf({"text_encoder.encoder.block.0.layer.2.EncDecAttention.q.weight": torch.zeros(1)},
                              prefix="text_encoder.")


def test_fully_masked_row_gives_no_nan():
    torch.manual_seed(0)
    model = T5Encoder(T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)).eval()
    ids = torch.randint(0, 50, (2, 5))
    mask = torch.tensor([[True] * 5, [False] * 5])  # the second row has no token at all
    with torch.no_grad():
        out = model(ids, mask)
    assert torch.isfinite(out).all()
    with torch.no_grad():  # and the first row does not depend on the second
        alone = model(ids[:1], mask[:1])
    torch.testing.assert_close(out[:1], alone, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------
# Tokenizer
# ------------------------------------------------------------------------------------------------

# A hand-made unigram vocabulary in T5's layout: <pad> 0, </s> 1, <unk> 2, pieces, then <extra_id_N>.
# Scores are log-probabilities: whole words score above the sum of their parts, so Viterbi prefers them.
WORDS = ["the", "a", "happy", "rock", "song", "with", "guitar", "drum", "and", "synth", "pop", "track",
         "bass", "beat", "hip", "hop", "lo", "fi", "caf", "au", "lait", "fine", "full", "width", "zero",
         "ctrl", "char", "tempo", "bpm", "piano", "The", "A", "Lo", "80", "120"]
SUBWORDS = ["s", "y", "ar", "gui", "tar", "ing", "er", "80s", "...", "fi", "é"]  # "s", "y" again among the
# single characters below: a repeated piece keeps its last id and score, in `tokenizers` as in ours.


def t5_like_vocab():
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (MARK, -2.5)]
    vocab += [(MARK + w, -3.0 - 0.37 * len(w) - 0.011 * k) for k, w in enumerate(WORDS)]
    vocab += [(w, -4.0 - 0.41 * len(w) - 0.013 * k) for k, w in enumerate(SUBWORDS)]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.!?'-()/:"
    vocab += [(c, -6.0 - 0.017 * k) for k, c in enumerate(chars)]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in (1, 0)]
    return vocab


@functools.lru_cache(maxsize=None)
def nmt_nfkc_charsmap():
    """The real `nmt_nfkc` rules as SentencePiece compiles them (T5's normalizer): train a throwaway
    model and read NormalizerSpec.precompiled_charsmap (ModelProto field 3, its field 2) by hand."""
    spm = pytest.importorskip("sentencepiece")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["ab ba", "abba"] * 20), model_writer=buffer,
                                   vocab_size=8, hard_vocab_limit=False, model_type="unigram",
                                   normalization_rule_name="nmt_nfkc", minloglevel=2)

    def field(message, number):  # first length-delimited field `number` of a protobuf message
        i = 0
        while i < len(message):
            key, i = varint(message, i)
            if key & 7 == 0:
                _, i = varint(message, i)
            elif key & 7 in (1, 5):
                i += 8 if key & 7 == 1 else 4
            else:
                length, i = varint(message, i)
                if key >> 3 == number:
                    return message[i:i + length]
                i += length

    def varint(data, i):
        value, shift = 0, 0
        while True:
            value |= (data[i] & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if data[i - 1] < 0x80:
                return value, i

    return field(field(buffer.getvalue(), 3), 2)


def save_tokenizer(path, layout="t5", charsmap=None):
    """Write a tokenizer.json like the published ones: normalizer Precompiled (T5's nmt_nfkc rules,
    or none), pre_tokenizer WhitespaceSplit + Metaspace, post_processor "$A </s>", T5's added tokens.
    layout "legacy": the same as older `tokenizers` wrote it (Metaspace "add_prefix_space": true)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
    vocab = t5_like_vocab()
    tok = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Precompiled(charsmap) if charsmap else None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement=MARK, prepend_scheme="always")])
    tok.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                       special_tokens=[("</s>", 1)])
    tok.decoder = decoders.Metaspace(replacement=MARK, prepend_scheme="always")
    specials = ["<pad>", "</s>", "<unk>"] + [piece for piece, _ in vocab if piece.startswith("<extra_id_")]
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    tok.save(str(path))
    if layout == "legacy":
        spec = json.loads(path.read_text(encoding="utf-8"))
        legacy = {"type": "Metaspace", "replacement": MARK, "add_prefix_space": True}
        spec["pre_tokenizer"]["pretokenizers"][1] = legacy
        path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return path


TEXTS = [
    "The happy rock song, with guitars!",
    "80s pop track with bassy drums and synth",
    "  Lo-fi   hip hop\tbeat\n\n at 120 bpm  ",  # leading, repeated and trailing whitespace
    "café au lait",  # é is a piece here
    "cafe\u0301 au lait",  # e + combining acute: the normalizer composes it to é
    "日本の音楽 and naïve ûber",  # runs of unknown characters fuse into one <unk>
    "ＦＵＬＬ width ﬁne… ½",  # NFKC: full-width letters, ligature, ellipsis, fraction
    "zero\u200bwidth ctrl\x07char\u3000tempo",  # zero-width space, a control character, ideographic space
    "a </s> b <extra_id_0>!",  # added tokens are taken verbatim
    "",
    "QUIET PIANO (slow), 60-70 BPM: 'ambient'?",
]


def reference_ids(path, texts):
    transformers = pytest.importorskip("transformers")
    reference = transformers.T5TokenizerFast(tokenizer_file=str(path))
    assert (reference.pad_token_id, reference.eos_token_id, reference.unk_token_id) == (0, 1, 2)
    batch = reference(texts, padding=True, return_tensors="pt")
    raw = pytest.importorskip("tokenizers").Tokenizer.from_file(str(path))  # the file read literally
    assert [raw.encode(t).ids for t in texts] == [ids[m.bool()].tolist() for ids, m in
                                                  zip(batch["input_ids"], batch["attention_mask"])]
    return batch["input_ids"], batch["attention_mask"].bool()


@pytest.mark.parametrize("layout", ["t5", "legacy"])
def test_tokenizer_matches_hf_with_t5_normalizer(tmp_path, layout):
    path = save_tokenizer(tmp_path / "tokenizer.json", layout, charsmap=nmt_nfkc_charsmap())
    expected_ids, expected_mask = reference_ids(path, TEXTS)
    ids, mask = UnigramTokenizer.from_file(path).encode(TEXTS)
    for text, got, expected in zip(TEXTS, ids.tolist(), expected_ids.tolist()):
        assert got == expected, text
    assert torch.equal(mask, expected_mask)


def test_tokenizer_matches_hf_without_normalizer(tmp_path):
    """Viterbi, word marks, <unk> fusing and padding, with only `tokenizers` and `transformers`."""
    path = save_tokenizer(tmp_path / "tokenizer.json", "t5", charsmap=None)
    expected_ids, expected_mask = reference_ids(path, TEXTS)
    ids, mask = UnigramTokenizer.from_file(path).encode(TEXTS)
    assert ids.tolist() == expected_ids.tolist() and torch.equal(mask, expected_mask)


def test_tokenizer_matches_hf_on_random_strings(tmp_path):
    """Seeded random strings of tricky pieces: combining marks after controls, CR LF, joiners, U+2581."""
    tokenizers = pytest.importorskip("tokenizers")
    path = save_tokenizer(tmp_path / "tokenizer.json", "t5", charsmap=nmt_nfkc_charsmap())
    ours, reference = UnigramTokenizer.from_file(path), tokenizers.Tokenizer.from_file(str(path))
    pool = list("abeghilnorstuy ,.!'-") + ["the ", "guitar", "  ", "\t", "\n", "\r\n", "\r", "e\u0301", "\u0301",
                                           "\u0308", "日本", "ﬁ", "…", "Ａ", "\u200b", "\u200d", "\x07", "\u3000",
                                           "\xa0", "👍🏽", "\u1112\u1161", "½", "\ufeff", MARK, "</s>", "<unk"]
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 10)))
        assert ours.tokenize(text) == reference.encode(text).ids, ascii(text)


def test_other_pipelines_are_refused(tmp_path):
    spec = json.loads(save_tokenizer(tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    spec["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False}
    with pytest.raises(ValueError, match="not T5's pipeline"):
        UnigramTokenizer(spec)


def test_viterbi_by_hand():
    spec = {"model": {"type": "Unigram", "unk_id": 2, "vocab": [
        ["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0], [MARK, -3.0], [MARK + "gui", -4.0],
        ["tar", -4.0], [MARK + "guitar", -9.0], ["g", -5.0], ["u", -5.0], ["i", -5.0], ["s", -2.0]]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"}, {"type": "Metaspace", "replacement": MARK, "add_prefix_space": True}]},
        "post_processor": {"type": "TemplateProcessing", "single": [
            {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}}}
    tok = UnigramTokenizer(spec)
    # "▁gui" + "tar" (-8) beats "▁guitar" (-9); "xyz" has no piece: one fused <unk>, then </s>.
    assert tok.tokenize("guitars") == [4, 5, 10, 1]
    assert tok.tokenize("guitar xyz") == [4, 5, 3, 2, 1]
    ids, mask = tok.encode(["guitar", "", "s s"])
    assert ids.tolist() == [[4, 5, 1, 0, 0], [1, 0, 0, 0, 0], [3, 10, 3, 10, 1]]  # "" is </s> alone
    assert mask.tolist() == [[True] * 3 + [False] * 2, [True] + [False] * 4, [True] * 5]
