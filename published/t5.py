"""The T5 text encoder of MusicGen's text conditioning (paper §2.4), with its tokenizer, by hand.

MusicGen encodes the text description with a *frozen, pretrained* T5-base encoder (Raffel et al., 2020)
and the LM cross-attends to the result; the reference implementations first project it to the LM width
with one linear layer (`enc_to_dec_proj` in HF transformers; that projection belongs to the LM side, not
here). This file has the two halves needed to load the published T5 weights and reproduce their output:

1. `UnigramTokenizer`: SentencePiece's unigram model (Kudo, 2018), read from a HF `tokenizer.json`:
       text ─normalize─▶ ─split into words, "▁" marks each word start─▶ ─Viterbi─▶ piece ids, then </s>
2. `T5Encoder`: a pre-norm transformer encoder with T5's three peculiarities:
   - relative position *bias* instead of position embeddings: a learned scalar per (head, bucket of
     key - query distance) is added to the attention logits (Raffel et al. §2.1);
   - RMS norm: no mean subtraction, no bias (Zhang & Sennrich, 2019), computed in fp32;
   - attention logits are NOT scaled by 1/sqrt(d_kv) (T5 folds that scale into W_Q's initialisation).

Shape letters: B batch, L tokens, D d_model, H heads, Dh d_kv (head width), F d_ff.
Data flow: texts ─UnigramTokenizer.encode─▶ ids, mask (B, L) ─T5Encoder─▶ (B, L, D)
           ─(MusicGen: Linear D → LM width, padded rows zeroed)─▶ LM cross-attention.

Reference: HF transformers' T5EncoderModel and T5TokenizerFast; tests/test_t5.py compares to both,
and to the real `nmt_nfkc` normalization rules (T5's) compiled by SentencePiece.
"""
import base64
import json
import math
import re
import struct
import unicodedata
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------
# 1. Tokenizer
# ------------------------------------------------------------------------------------------------

MARK = "\u2581"  # "▁": SentencePiece's visible word-start mark (spaces become it, so they are pieces)
# What Rust's char::is_whitespace (used by the `tokenizers` library) calls whitespace.
WHITESPACE = re.compile("[\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
UNK_PENALTY = 10.0  # an unknown character scores (lowest piece score - 10), as in SentencePiece


def graphemes(text: str) -> list:
    """Split text into user-perceived characters (UAX #29 grapheme clusters), as `tokenizers` does before
    normalizing. Only clusters under 6 bytes are looked up whole (see CharsMap): a short character with
    combining marks or joiners, or CR LF. So these rules suffice: CR × LF; no joining onto a control
    character (GB3-5); marks, ZWJ/ZWNJ, skin tones and tags join the previous character (GB9, GB9a)."""
    def extend(c):
        return (unicodedata.category(c) in ("Mn", "Me", "Mc") or c in "\u200c\u200d"
                or "\U0001f3fb" <= c <= "\U0001f3ff" or "\U000e0020" <= c <= "\U000e007f")

    def control(c):
        return unicodedata.category(c) in ("Cc", "Zl", "Zp") or (unicodedata.category(c) == "Cf" and not extend(c))

    clusters = []
    for c in text:
        if clusters and ((clusters[-1][-1] == "\r" and c == "\n") or (not control(clusters[-1][-1]) and extend(c))):
            clusters[-1] += c
        else:
            clusters.append(c)
    return clusters


class CharsMap:
    """SentencePiece's precompiled normalization rules ("Precompiled" in tokenizer.json).

    T5's rules are `nmt_nfkc`: Unicode NFKC, plus whitespace-like characters (tab, newline, ZWSP, ...)
    → " ", and control characters → removed. The file ships them compiled, base64 of:
        ┌──────────────┬───────────────────────────────────────┬───────────────────────────────────┐
        │ T: u32 (LE)  │ T bytes: double-array trie, u32 each  │ replacement strings, NUL-ended    │
        └──────────────┴───────────────────────────────────────┴───────────────────────────────────┘
    The trie (darts-clone) maps the UTF-8 bytes of a source string to its replacement's offset.
    """

    def __init__(self, blob: bytes):
        size = int.from_bytes(blob[:4], "little")
        if len(blob) < 4 or size % 4 or 4 + size > len(blob):
            raise ValueError("tokenizer.json: precompiled_charsmap is truncated or malformed")
        self.units = struct.unpack_from(f"<{size // 4}I", blob, 4)
        self.replacements = blob[4 + size:]

    def lookup(self, key: bytes):
        """Replacement for the *shortest* prefix of `key` that has a rule, or None (`tokenizers` takes
        the first of the prefix matches, i.e. the shortest). A unit packs: bits 0-7 label, bit 8
        "a rule ends here", bits 10-31 the XOR offset to its children (scaled by 256 if bit 9)."""
        units, offset = self.units, lambda unit: (unit >> 10) << ((unit & (1 << 9)) >> 6)
        node = offset(units[0])
        for byte in key:
            node ^= byte  # the child labelled `byte`, if the label stored there agrees
            if byte == 0 or node >= len(units) or units[node] & ((1 << 31) | 0xFF) != byte:
                return None
            unit = units[node]
            node ^= offset(unit)
            if unit >> 8 & 1:  # a rule ends here: the leaf below holds its replacement's offset
                start = units[node] & 0x7FFFFFFF
                end = self.replacements.find(b"\0", start)
                return self.replacements[start:end if end >= 0 else None].decode("utf-8")
        return None

    def __call__(self, text: str) -> str:
        out = []
        for cluster in graphemes(text):
            # A short cluster is looked up whole (e + combining acute → é), otherwise char by char.
            whole = self.lookup(cluster.encode()) if len(cluster.encode()) < 6 else None
            out += [whole] if whole is not None else [r if (r := self.lookup(c.encode())) is not None else c
                                                      for c in cluster]
        return "".join(out)


class UnigramTokenizer:
    """SentencePiece unigram tokenizer, from the `tokenizer.json` of a published T5 / MusicGen folder.

    The unigram model gives each piece a log-probability (its "score") and reads a word as the
    segmentation with the highest total score (Kudo, 2018):
        best(word) = argmax over segmentations word = p_1 p_2 ... p_n of  Σ_i score(p_i)
    found by Viterbi over the word's characters. A character that no piece covers becomes <unk> with
    score min(score) - 10; consecutive <unk>s are fused into one (as `tokenizers` does).
    """

    def __init__(self, spec: dict):
        model = spec["model"]
        if model.get("type", "Unigram") != "Unigram" or model.get("byte_fallback"):
            raise ValueError("tokenizer.json: only a Unigram model without byte_fallback is supported")
        self.pieces = [piece for piece, _ in model["vocab"]]
        self.scores = [float(score) for _, score in model["vocab"]]
        self.index = {piece: i for i, piece in enumerate(self.pieces)}  # a repeated piece: last id wins
        self.longest = max(len(piece) for piece in self.pieces)
        self.unk_id, self.unk_score = model.get("unk_id"), min(self.scores) - UNK_PENALTY
        self.pad_id = self.index.get("<pad>", 0)
        # T5's pipeline, which is what this class implements: normalizer "Precompiled"; pre_tokenizer
        # WhitespaceSplit then Metaspace (older files write its "always prepend ▁" as add_prefix_space).
        normalizer, pre = spec.get("normalizer") or {"type": "Precompiled"}, spec.get("pre_tokenizer") or {}
        meta = (pre.get("pretokenizers") or [{}])[-1]
        prepend = meta.get("prepend_scheme") or ("always" if meta.get("add_prefix_space", True) else "never")
        if (normalizer["type"] != "Precompiled" or meta.get("replacement") != MARK or prepend != "always"
                or [step["type"] for step in pre.get("pretokenizers", [])] != ["WhitespaceSplit", "Metaspace"]
                or not meta.get("split", True)):
            raise ValueError("tokenizer.json: not T5's pipeline (normalizer Precompiled; pre_tokenizer "
                             "WhitespaceSplit then Metaspace prepending '\u2581' to every word)")
        blob = base64.b64decode(normalizer.get("precompiled_charsmap") or "")
        self.normalize = CharsMap(blob) if blob else (lambda s: s)
        # Added tokens (<pad>, </s>, <unk>, <extra_id_N>) are cut out of the raw text before anything else.
        self.added = {token["content"]: token["id"] for token in spec.get("added_tokens", [])}
        alternatives = "|".join(map(re.escape, sorted(self.added, key=len, reverse=True)))
        self.added_regex = re.compile(f"({alternatives})") if self.added else None
        # Post-processor: the special ids before and after the text ($A). T5's template is "$A </s>".
        post = spec.get("post_processor") or {"type": "TemplateProcessing", "single": [{"Sequence": {}}]}
        if post["type"] != "TemplateProcessing":
            raise ValueError(f"tokenizer.json: unsupported post_processor {post['type']!r}")
        parts = [post["special_tokens"][item["SpecialToken"]["id"]]["ids"] if "SpecialToken" in item else None
                 for item in post["single"]]  # None stands for the text
        self.prefix, self.suffix = sum(parts[:parts.index(None)], []), sum(parts[parts.index(None) + 1:], [])

    @classmethod
    def from_file(cls, path):
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    def segment(self, word: str) -> list:
        """Viterbi: best[e] = (best total score of word[:e], start of its last piece, that piece's id)."""
        n = len(word)
        best = [(0.0, 0, -1)] + [None] * n
        for start in range(n):
            base, covered = best[start][0], False  # every position is reachable: <unk> covers any char
            for end in range(start + 1, min(n, start + self.longest) + 1):
                i = self.index.get(word[start:end])
                if i is not None:
                    covered |= end == start + 1
                    # Strict ">": on a tie the path whose last piece starts earliest wins, as in `tokenizers`.
                    if best[end] is None or base + self.scores[i] > best[end][0]:
                        best[end] = (base + self.scores[i], start, i)
            if not covered:  # no piece is this single character: <unk>
                if self.unk_id is None:
                    raise ValueError(f"cannot tokenize {word!r}: {word[start]!r} has no piece and there is no unk_id")
                if best[start + 1] is None or base + self.unk_score > best[start + 1][0]:
                    best[start + 1] = (base + self.unk_score, start, self.unk_id)
        ids, end = [], n
        while end > 0:  # walk back along the best path
            _, end, i = best[end]
            if not (i == self.unk_id and ids and ids[-1] == self.unk_id):  # fuse consecutive <unk>
                ids.append(i)
        return ids[::-1]

    def tokenize(self, text: str) -> list:
        """One text → its ids, special tokens included (T5 appends </s>)."""
        ids = []
        chunks = self.added_regex.split(text) if self.added_regex else [text]
        for k, chunk in enumerate(chunks):  # split() alternates: text, added token, text, ...
            if k % 2:
                ids.append(self.added[chunk])
            else:
                for word in self.words(self.normalize(chunk)):
                    ids += self.segment(word)
        return self.prefix + ids + self.suffix

    @staticmethod
    def words(text: str) -> list:
        """Pre-tokenization: split on whitespace, which is dropped (so runs of spaces, tabs and newlines
        count as one), and mark each word's start with "▁", which then also splits: "Hi  a▁b" → ▁Hi, ▁a, ▁b."""
        out = []
        for word in filter(None, WHITESPACE.split(text)):
            word = word if word.startswith(MARK) else MARK + word
            out += [MARK + part for part in word.split(MARK)[1:]]  # each "▁" starts a word: "▁▁b" → ▁, ▁b
        return out

    def encode(self, texts):
        """list of B strings → ids (B, L) int64 padded with pad_id (0), mask (B, L) bool (True = token)."""
        rows = [self.tokenize(text) for text in texts]
        ids = torch.full((len(rows), max([1] + [len(row) for row in rows])), self.pad_id, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask = torch.arange(ids.shape[1]) < torch.tensor([len(row) for row in rows])[:, None]  # (B, L)
        return ids, mask


# ------------------------------------------------------------------------------------------------
# 2. Encoder
# ------------------------------------------------------------------------------------------------

@dataclass
class T5Config:
    """Hyper-parameters of a T5 encoder; the defaults are T5-base, MusicGen's text encoder."""
    vocab_size: int = 32128
    d_model: int = 768
    d_kv: int = 64
    d_ff: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # T5-base; "gated-gelu" is T5 v1.1 / Flan-T5

    @classmethod
    def from_hf(cls, config: dict) -> "T5Config":
        """From a HF T5 config dict, e.g. config.json["text_encoder"] of a MusicGen folder."""
        cfg = cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})
        if cfg.feed_forward_proj not in ("relu", "gated-gelu"):
            raise ValueError(f"T5 feed_forward_proj must be 'relu' or 'gated-gelu', got {cfg.feed_forward_proj!r}")
        return cfg


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32, max_distance: int = 128):
    """Bucket of each key - query distance, bidirectional (T5 encoder; Raffel et al. §2.1).

    Half of the buckets for keys left of the query, half (offset by num_buckets/2) for keys right of it.
    Within a half of n = num_buckets/2 buckets, small distances get their own bucket, larger ones
    share logarithmically wider buckets, and everything from max_distance on shares the last one:
        bucket(d) = d                                                             if d < n/2
                  = min(n - 1, n/2 + ⌊log(d / (n/2)) / log(max_distance / (n/2)) · (n - n/2)⌋)  otherwise
    (32 buckets, 128: distances 0..7 exact, 8..127 in 8 log buckets, ≥ 128 in bucket 15.)
    """
    n = num_buckets // 2
    bucket = (relative_position > 0).long() * n  # keys to the right use the upper half
    distance, exact = relative_position.abs(), n // 2
    # clamp(min=1): log(0) is never used (where() takes the exact branch) but would be -inf.
    log_bucket = exact + (torch.log(distance.clamp(min=1).float() / exact)
                          / math.log(max_distance / exact) * (n - exact)).long()
    return bucket + torch.where(distance < exact, distance, log_bucket.clamp(max=n - 1))


class T5LayerNorm(nn.Module):
    """RMS norm: y = w · x / sqrt(mean(x²) + eps). No mean subtraction, no bias; statistics in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)  # (B, L, D) -> (B, L, 1)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(self.weight.dtype)


class T5Attention(nn.Module):
    """Multi-head self-attention, T5 style: no biases, no 1/sqrt(Dh), an additive position bias.

        Attention(Q, K, V) = softmax(Q K^T + bias) V,   bias = position bias + mask (-big on padding)
    """

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.n_heads, self.d_kv = cfg.num_heads, cfg.d_kv
        inner = cfg.num_heads * cfg.d_kv  # = D for T5-base, but not required to be
        self.q, self.k, self.v = (nn.Linear(cfg.d_model, inner, bias=False) for _ in range(3))
        self.o = nn.Linear(inner, cfg.d_model, bias=False)

    def forward(self, x, bias):
        """x (B, L, D), bias (B or 1, H, L, L) → (B, L, D)."""
        B, L, _ = x.shape
        q, k, v = (proj(x).view(B, L, self.n_heads, self.d_kv).transpose(1, 2)  # (B, L, H·Dh) -> (B, H, L, Dh)
                   for proj in (self.q, self.k, self.v))
        scores = q @ k.transpose(-2, -1) + bias  # (B, H, L, Dh) @ (B, H, Dh, L) -> (B, H, L, L)
        weights = scores.float().softmax(dim=-1).type_as(scores)
        out = (weights @ v).transpose(1, 2).reshape(B, L, -1)  # (B, H, L, Dh) -> (B, L, H·Dh)
        return self.o(out)


class T5FeedForward(nn.Module):
    """"relu": wo ReLU(wi x) (T5-base).  "gated-gelu": wo (GELU_tanh(wi_0 x) ⊙ wi_1 x) (T5 v1.1). No biases."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.gated = cfg.feed_forward_proj == "gated-gelu"
        for name in ("wi_0", "wi_1") if self.gated else ("wi",):
            setattr(self, name, nn.Linear(cfg.d_model, cfg.d_ff, bias=False))
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        h = F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x) if self.gated else F.relu(self.wi(x))  # D -> F
        return self.wo(h)  # (B, L, F) -> (B, L, D)


class T5Block(nn.Module):
    """Pre-norm block:  x = x + Attention(Norm(x)),  x = x + FeedForward(Norm(x))."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.attention_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.attention = T5Attention(cfg)
        self.feed_forward_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.feed_forward = T5FeedForward(cfg)

    def forward(self, x, bias):
        x = x + self.attention(self.attention_norm(x), bias)
        return x + self.feed_forward(self.feed_forward_norm(x))


class T5Encoder(nn.Module):
    """Token embedding → num_layers blocks → final RMS norm. No position embedding: positions enter
    only through the relative bias, computed once from one table (the first layer's in the published
    weights) and shared by every block. Eval-only: T5's dropout is left out."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)
        self.blocks = nn.ModuleList(T5Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def position_bias(self, L: int, device=None) -> torch.Tensor:
        """(1, H, L, L): bias[h, i, j] = table[bucket(j - i), h] for query i, key j."""
        position = torch.arange(L, device=device)
        relative = position[None, :] - position[:, None]  # (L,) -> (L, L): key - query
        buckets = relative_position_bucket(relative, self.cfg.relative_attention_num_buckets,
                                           self.cfg.relative_attention_max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]  # (L, L, H) -> (1, H, L, L)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor = None) -> torch.Tensor:
        """ids (B, L) int64, mask (B, L) bool (True = real token) → hidden states (B, L, D). Padded
        positions get outputs too (they attend to the real tokens), as in the reference; the MusicGen
        side zeroes them after its projection."""
        x = self.embedding(ids)  # (B, L) -> (B, L, D)
        bias = self.position_bias(ids.shape[1], ids.device)  # (1, H, L, L)
        if mask is not None:
            # Padded keys: add the most negative finite float (as the reference does), not -inf. A row
            # whose keys are ALL padding then gives uniform weights, never softmax(-inf...) = 0/0 = NaN.
            bias = bias.masked_fill(~mask[:, None, None, :], torch.finfo(bias.dtype).min)  # -> (B, H, L, L)
        for block in self.blocks:
            x = block(x, bias)
        return self.final_norm(x)


# HF T5EncoderModel key (prefix removed) → ours. MusicGen checkpoints hold them under "text_encoder.".
_HF_KEYS = [
    (r"shared\.weight", "embedding.weight"),
    (r"encoder\.embed_tokens\.weight", "embedding.weight"),  # tied to shared.weight: the same tensor
    (r"encoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight", "relative_attention_bias.weight"),
    (r"encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.weight", r"blocks.\1.attention.\2.weight"),
    (r"encoder\.block\.(\d+)\.layer\.0\.layer_norm\.weight", r"blocks.\1.attention_norm.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight", r"blocks.\1.feed_forward.\2.weight"),
    (r"encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", r"blocks.\1.feed_forward_norm.weight"),
    (r"encoder\.final_layer_norm\.weight", "final_norm.weight"),
]


def t5_state_dict_from_hf(sd: dict, prefix: str = "") -> dict:
    """HF T5EncoderModel state dict → `T5Encoder` state dict. Keys without `prefix` are ignored (so a
    whole MusicGen checkpoint can be passed with prefix="text_encoder."); any other key under it that
    is not a T5 encoder weight is an error."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        new = next((re.sub(pattern, ours, name) for pattern, ours in _HF_KEYS if re.fullmatch(pattern, name)), None)
        if new is None:
            raise ValueError(f"unexpected key for a T5 encoder: {key!r}")
        if new in out and not torch.equal(out[new], value):  # shared.weight and its tied copy
            raise ValueError(f"{key} differs from the tied weight already read for {new}")
        out[new] = value
    return out
