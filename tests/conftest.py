"""Shared fixtures. Tests run offline on CPU with tiny debug encoders unless they say otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["tests.s3", "tests.serve_server"]  # moto_server, aws_env, s3_bucket; serve_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MMVA_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
MELD_DIR = Path(os.environ.get("MMVA_MELD_DIR", SHARED / "data" / "meld"))
SPEECH_EMOTION_DIR = Path(os.environ.get("MMVA_SPEECH_EMOTION_DIR", SHARED / "data" / "speech-emotion"))


@pytest.fixture(scope="session")
def meld_dir() -> Path:
    if not (MELD_DIR / "dev_sent_emo.csv").exists():
        pytest.skip(f"MELD transcripts not found in {MELD_DIR} (set MMVA_MELD_DIR)")
    return MELD_DIR


@pytest.fixture(scope="session")
def generated_corpus(tmp_path_factory) -> Path:
    """A small generated MELD-format corpus (train + dev, 6 clips per emotion each; ~5 s to make).

    Each modality carries the label on its own (see ``mmva.data.synth``); do not write into it.
    """
    from mmva.data.synth import make_corpus

    return make_corpus(tmp_path_factory.mktemp("generated_corpus"), n_per_class=6, seed=0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread: on 2 shared cores, torch's intra-op threads make
    the tiny tensor operations of the debug models 10-100x slower under contention."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
