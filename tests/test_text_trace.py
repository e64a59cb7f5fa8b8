"""The default text model's fast start: a cached TorchScript trace with the eager model's logits."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmva.model.default import default_model_dir
from mmva.model.textclf import TextClassifier, TracedTextClassifier, load_for_inference, trace_file

MODEL = default_model_dir() / "text_model.safetensors"
TEXTS = ["I love it!", "This is terrible, I hate it.", "Wh\u2019at?? " * 60, "ok",
         "\u00c7a va tr\u00e8s bien, merci \U0001F600", "Are you serious right now?"]
CONTEXTS = [["Look what I got you."], [], ["x" * 500], ["Hello there, how are you?"], [], ["I quit my job."]]


@pytest.fixture(scope="module")
def eager() -> TextClassifier:
    return TextClassifier.load(MODEL, merge=True)


def test_the_trace_is_made_once_and_gives_the_same_logits(eager: TextClassifier, tmp_path: Path) -> None:
    first = load_for_inference(MODEL, cache_dir=tmp_path)
    assert not isinstance(first, TracedTextClassifier)  # nothing cached yet: the eager model ...
    assert trace_file(MODEL, tmp_path).exists()  # ... whose trace is kept for the next process
    fast = load_for_inference(MODEL, cache_dir=tmp_path)
    assert isinstance(fast, TracedTextClassifier)
    assert fast.config == eager.config and fast.extra == eager.extra
    for texts, contexts in ((TEXTS, CONTEXTS), (TEXTS[:1], None), (TEXTS[2:3], CONTEXTS[2:3])):
        enc_a, enc_b = fast.encode(texts, contexts), eager.encode(texts, contexts)
        assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_b)  # the same tokens without transformers
        for calibrated in (True, False):
            a = fast.predict_logits(texts, contexts, calibrated=calibrated)
            b = eager.predict_logits(texts, contexts, calibrated=calibrated)
            for task in b:
                torch.testing.assert_close(a[task], b[task], atol=1e-5, rtol=1e-5)
    assert fast.predict_logits([])["emotion"].shape == (0, 7)


def test_the_trace_is_keyed_by_the_model_file_content(tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(MODEL.read_bytes())
    assert trace_file(copy, tmp_path) == trace_file(MODEL, tmp_path)  # where it lies does not matter
    unmerged = TextClassifier.load(MODEL, merge=False)
    unmerged.bias_emotion.add_(0.5)  # a recalibrated model is another file: another trace
    unmerged.save(tmp_path / "recalibrated.safetensors")
    assert trace_file(tmp_path / "recalibrated.safetensors", tmp_path) != trace_file(MODEL, tmp_path)


def test_a_broken_cached_trace_falls_back_to_the_eager_model(eager: TextClassifier, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    cached = trace_file(MODEL, tmp_path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"not a TorchScript archive")
    with caplog.at_level(logging.WARNING):
        model = load_for_inference(MODEL, cache_dir=tmp_path)
    assert not isinstance(model, TracedTextClassifier)
    assert "unreadable" in caplog.text and str(cached) in caplog.text
    torch.testing.assert_close(model.predict_logits(TEXTS)["emotion"], eager.predict_logits(TEXTS)["emotion"])
    assert isinstance(load_for_inference(MODEL, cache_dir=tmp_path), TracedTextClassifier)  # rewritten


def test_a_second_process_does_not_import_transformers(tmp_path: Path) -> None:
    code = ("import sys\nfrom mmva.model.default import load_default_model\n"
            "m = load_default_model()\nprint(m.text_probs(['What a wonderful surprise!'])[0]['emotion'].argmax(),"
            " 'transformers' in sys.modules, 'peft' in sys.modules)")
    env = {**__import__("os").environ, "MMVA_CACHE": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr
    first, second = (r.stdout.split() for r in runs)
    assert first[0] == second[0]  # the same top emotion
    assert first[1:] == ["True", "True"] and second[1:] == ["False", "False"]
