"""The default text model without torch or transformers at start-up: its ONNX form, cached.

Why: importing torch, transformers and peft costs several seconds of every cold command on a small
machine (issue 15: `mmva analyze-text` of one sentence took 4-7 s here, nearly all imports), while the
merged MiniLM runs in milliseconds. The first process that loads a model file exports the eager model
(base + LoRA folded in + heads; the calibration stays outside, read from the model file) to ONNX with
torch's exporter and keeps it in ``$MMVA_CACHE/text-onnx/``; later processes run it with onnxruntime
(already a dependency, through faster-whisper) and the `tokenizers` library: the same logits
(tests/test_text_onnx.py compares them with the eager model), no torch import. The cache machinery
(naming, pruning, sessions) is shared with the face and speaker networks: :mod:`mmva.model.onnx_cache`.

Only the bases whose export is tested (:data:`ONNX_BASES`) take this path; any failure to export or
read falls back to the eager model (:func:`load_for_inference`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmva.model.onnx_cache import STALE_DAYS, lib_version, prune, session, touch  # noqa: F401 (STALE_DAYS, prune: this module's API)
from mmva.model.textprep import TextClassifierConfig, base_dir, by_length, encode_arrays

log = logging.getLogger(__name__)
ONNX_FORMAT = "1"
# Bases whose ONNX form is tested against the eager model; others always run eagerly.
ONNX_BASES = ("all-MiniLM-L6-v2",)


def onnx_file(path: str | Path, config: TextClassifierConfig, cache_dir: str | Path | None = None) -> Path:
    """Where the ONNX form of the model file ``path`` is (or would be) cached: one file per model
    file content, base weights (path, size, time), exporting libraries and format."""
    from mmva.encoders.weights import cache_root

    path = Path(path)
    base = base_dir(config.base) / "model.safetensors"
    stat = base.stat() if base.exists() else None
    h = hashlib.sha256(path.read_bytes())
    h.update("|".join([config.base, str(base.resolve()), str(stat.st_size if stat else 0),
                       str(stat.st_mtime_ns if stat else 0), *(lib_version(lib) for lib in ("torch", "transformers", "peft")),
                       ONNX_FORMAT]).encode())
    return Path(cache_dir or cache_root() / "text-onnx") / f"{config.base}-{h.hexdigest()[:20]}.onnx"


class OnnxTextClassifier:
    """Inference-only twin of :class:`mmva.model.textclf.TextClassifier` over an ONNX session:
    ``encode``, ``predict_logits`` (NumPy arrays) and ``calibrate`` with the same results."""

    bf16 = False

    def __init__(self, config: TextClassifierConfig, file: Path, tokenizer: Any, state: dict[str, np.ndarray],
                 extra: dict[str, Any], threads: int = 0) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.extra = extra
        self.file = file
        self.session = session(file, threads or min(os.cpu_count() or 1, 4))
        self._inputs = {i.name for i in self.session.get_inputs()}
        self._lock = threading.Lock()  # one run at a time: the server may analyse in threads
        self.temperature = {task: float(np.asarray(state[f"temperature_{task}"]).reshape(-1)[0])
                            for task in config.labels}
        self.bias = {task: np.asarray(state[f"bias_{task}"], np.float32) for task in config.labels}

    def encode(self, texts: Sequence[str], contexts: Sequence[Sequence[str]] | None = None,
               following: Sequence[Sequence[str]] | None = None) -> dict[str, np.ndarray]:
        return encode_arrays(self.tokenizer, self.config, texts, contexts, following)

    def forward(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Raw logits per task of an encoded batch."""
        with self._lock:
            outs = self.session.run(None, {k: v for k, v in batch.items() if k in self._inputs})
        return dict(zip(self.config.labels, outs))

    def calibrate(self, logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The fitted temperature and per-class bias: ``logits / T + b``."""
        return {task: z / self.temperature[task] + self.bias[task] for task, z in logits.items()}

    def predict_logits(self, texts: Sequence[str], contexts: Sequence[Sequence[str]] | None = None,
                       batch_size: int = 64, calibrated: bool = True,
                       following: Sequence[Sequence[str]] | None = None) -> dict[str, np.ndarray]:
        """Logits ``{"emotion": (n, 7), "sentiment": (n, 3)}`` for many texts, batched by length."""
        def run(idx: list[int]) -> dict[str, np.ndarray]:
            z = self.forward(self.encode([texts[i] for i in idx], [contexts[i] for i in idx] if contexts else None,
                                         [following[i] for i in idx] if following else None))
            return self.calibrate(z) if calibrated else z

        return by_length(texts, batch_size, run, {task: len(labels) for task, labels in self.config.labels.items()})

    def to(self, device: Any) -> "OnnxTextClassifier":
        if str(device) != "cpu":
            raise ValueError("the ONNX text model runs on the CPU; load the eager model for an accelerator")
        return self

    def eval(self) -> "OnnxTextClassifier":
        return self


def load_for_inference(path: str | Path, cache_dir: str | Path | None = None) -> Any:
    """The model file ``path`` ready for inference, loaded the fastest way that gives the same logits:
    its cached ONNX form when there is one (:class:`OnnxTextClassifier`: torch, transformers and peft
    are not imported); otherwise the eager :class:`mmva.model.textclf.TextClassifier`, whose ONNX form
    is then written for the next process. A file that cannot be written or read is logged and skipped."""
    from mmva.model.textprep import FastTokenizer, read_model_file

    path = Path(path)
    try:
        config, state, extra = read_model_file(path)
        file = onnx_file(path, config, cache_dir) if config.base in ONNX_BASES else None
    except (OSError, ValueError, KeyError) as exc:  # e.g. base weights missing: the eager load says so
        log.info("%s: no ONNX form (%s)", path, exc)
        file = None
    if file is not None and file.exists():
        try:
            model = OnnxTextClassifier(config, file, FastTokenizer(base_dir(config.base)), state, extra)
            touch(file)  # in use: :func:`prune` keeps it
            return model
        except Exception as exc:  # a corrupt cached file, missing tokenizer files: rewritten below
            log.warning("%s: cached ONNX form of %s unreadable (%s); using the eager model", file, path, exc)
    from mmva.model.textclf import TextClassifier, save_onnx

    eager = TextClassifier.load(path, merge=True)
    if file is not None:
        try:
            save_onnx(eager, file)
            prune(file)
        except Exception as exc:  # e.g. a read-only cache or no `onnx` package: this process has the eager model
            log.warning("could not cache the text model's ONNX form in %s: %s", file, exc)
    return eager
