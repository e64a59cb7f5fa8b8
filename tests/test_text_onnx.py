"""The default text model's fast start: its cached ONNX form gives the eager model's logits, and a
process that finds it imports neither torch nor transformers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmva.model.default import default_model_dir
from mmva.model.text_onnx import OnnxTextClassifier, load_for_inference, onnx_file, prune
from mmva.model.textclf import TextClassifier
from mmva.model.textprep import read_model_file

MODEL = default_model_dir() / "text_model.safetensors"
TEXTS = ["I love it!", "This is terrible, I hate it.", "Wh\u2019at?? " * 60, "ok",
         "\u00c7a va tr\u00e8s bien, merci \U0001F600", "Are you serious right now?"]
CONTEXTS = [["Look what I got you."], [], ["x" * 500], ["Hello there, how are you?"], [], ["I quit my job."]]


@pytest.fixture(scope="module")
def eager() -> TextClassifier:
    return TextClassifier.load(MODEL, merge=True)


def _file(path: Path, cache: Path) -> Path:
    return onnx_file(path, read_model_file(path)[0], cache)


def test_the_onnx_form_is_made_once_and_gives_the_same_logits(eager: TextClassifier, tmp_path: Path) -> None:
    first = load_for_inference(MODEL, cache_dir=tmp_path)
    assert isinstance(first, TextClassifier)  # nothing cached yet: the eager model ...
    assert _file(MODEL, tmp_path).exists()  # ... whose ONNX form is kept for the next process
    fast = load_for_inference(MODEL, cache_dir=tmp_path)
    assert isinstance(fast, OnnxTextClassifier)
    assert fast.config == eager.config and fast.extra == eager.extra
    for texts, contexts in ((TEXTS, CONTEXTS), (TEXTS[:1], None), (TEXTS[2:3], CONTEXTS[2:3])):
        enc_a, enc_b = fast.encode(texts, contexts), eager.encode(texts, contexts)
        assert all(np.array_equal(enc_a[k], enc_b[k].numpy()) for k in enc_b)  # same tokens, no transformers
        for calibrated in (True, False):
            a = fast.predict_logits(texts, contexts, calibrated=calibrated)
            b = eager.predict_logits(texts, contexts, calibrated=calibrated)
            for task in b:
                np.testing.assert_allclose(a[task], b[task].numpy(), atol=1e-4, rtol=1e-4)
                assert (a[task].argmax(-1) == b[task].numpy().argmax(-1)).all()
    assert fast.predict_logits([])["emotion"].shape == (0, 7)


def test_the_onnx_form_is_keyed_by_the_model_file_content(tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(MODEL.read_bytes())
    assert _file(copy, tmp_path) == _file(MODEL, tmp_path)  # where it lies does not matter
    unmerged = TextClassifier.load(MODEL, merge=False)
    unmerged.bias_emotion.add_(0.5)  # a recalibrated model is another file: another ONNX file
    unmerged.save(tmp_path / "recalibrated.safetensors")
    assert _file(tmp_path / "recalibrated.safetensors", tmp_path) != _file(MODEL, tmp_path)


def test_a_broken_cached_file_falls_back_to_the_eager_model(eager: TextClassifier, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    cached = _file(MODEL, tmp_path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"not an ONNX model")
    with caplog.at_level(logging.WARNING):
        model = load_for_inference(MODEL, cache_dir=tmp_path)
    assert isinstance(model, TextClassifier)
    assert "eager model" in caplog.text and str(MODEL) in caplog.text
    np.testing.assert_allclose(model.predict_logits(TEXTS)["emotion"].numpy(),
                               eager.predict_logits(TEXTS)["emotion"].numpy(), atol=1e-6)
    assert isinstance(load_for_inference(MODEL, cache_dir=tmp_path), OnnxTextClassifier)  # rewritten
    assert oct(cached.stat().st_mode & 0o777) == oct(0o644 & ~_umask())  # a cache file others can read


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_second_process_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    code = ("import sys\nimport mmva\nr = mmva.analyze_text(['What a wonderful surprise!'])[0]\n"
            "print(r['emotions'][0]['label'], r['sentiments'][0]['label'], 'torch' in sys.modules,"
            " 'transformers' in sys.modules)")
    env = {**os.environ, "MMVA_CACHE": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    first, second = (r.stdout.split() for r in runs)
    assert first[:2] == second[:2]  # the same top emotion and sentiment
    assert first[2:] == ["True", "True"] and second[2:] == ["False", "False"]


def test_onnx_files_unused_for_a_month_are_removed(tmp_path: Path) -> None:
    import time

    old, recent = tmp_path / "all-MiniLM-L6-v2-old.onnx", tmp_path / "all-MiniLM-L6-v2-recent.onnx"
    for f in (old, recent):
        f.write_bytes(b"x")
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    load_for_inference(MODEL, cache_dir=tmp_path)  # writes this model's file, then prunes
    assert not old.exists() and recent.exists() and _file(MODEL, tmp_path).exists()
    kept = _file(MODEL, tmp_path)
    os.utime(kept, (month_ago, month_ago))
    load_for_inference(MODEL, cache_dir=tmp_path)  # loading it refreshes its time
    assert kept.stat().st_mtime > month_ago + 86400
    assert prune(kept) == []
