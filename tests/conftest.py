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
