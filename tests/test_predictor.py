"""One model from training to serving, with real processes: `mmva train` (tiny config) on a generated
corpus -> `mmva analyze --model CKPT` gives `mmva evaluate --predictions`' distributions for the same
clip -> `mmva serve --model CKPT` answers /invocations with that model -> the packaged model.tar.gz,
unpacked into a simulated /opt/ml/model and served through the container's entry script, answers
too. Also: models at s3:// URIs, the default model through the same interface, clear refusals of
files that are not models, and (slow) the reference architecture through the same path."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mmva.cloud import package
from mmva.labels import EMOTIONS, SENTIMENTS
from mmva.model.predictor import CheckpointPredictor, file_digest, folder_digest, load_predictor
from tests.s3 import aws_environment
from tests.serve_server import ServerProcess

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLIP = "dia0_utt1"  # a dev clip of the generated corpus
TOLERANCE = 2e-4  # evaluate rounds to 5 digits, the analyze JSON to 4


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **extra}


def mmva(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    exe = shutil.which("mmva")
    cmd = [exe] if exe else [sys.executable, "-c", "from mmva.cli import app; app()"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600, env=env or _env())
    if check:
        assert done.returncode == 0, f"mmva {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from mmva.data import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"), n_per_class={"train": 2, "dev": 1}, seed=3,
                       size=32, fps=4.0)


@pytest.fixture(scope="module")
def checkpoint(corpus, tmp_path_factory) -> Path:
    """`mmva train --config tiny` as a user runs it."""
    run = tmp_path_factory.mktemp("run") / "tiny"
    mmva("train", "--data", str(corpus), "--config", "tiny", "--out", str(run), "--set", "train.epochs=2",
         "--no-progress")
    return run / "checkpoints" / "last.safetensors"


@pytest.fixture(scope="module")
def evaluated(corpus, checkpoint, tmp_path_factory) -> dict[str, dict]:
    """`mmva evaluate --model CKPT --predictions`: per-utterance distributions by uid."""
    preds = tmp_path_factory.mktemp("eval") / "preds.jsonl"
    mmva("evaluate", "--model", str(checkpoint), "--data", str(corpus), "--split", "dev", "--predictions", str(preds))
    return {row["uid"]: row for row in map(json.loads, preds.read_text().splitlines())}


def _clip_with_subtitles(corpus: Path, folder: Path, uid: str = CLIP) -> tuple[Path, Path]:
    """A dev clip and a subtitle file covering it with its transcript (evaluate's segmentation)."""
    import csv

    rows = list(csv.DictReader((corpus / "dev_sent_emo.csv").open(encoding="utf-8")))
    dia, utt = uid.replace("dia", "").split("_utt")
    text = next(r["Utterance"] for r in rows if r["Dialogue_ID"] == dia and r["Utterance_ID"] == utt)
    folder.mkdir(parents=True, exist_ok=True)
    clip = shutil.copyfile(corpus / "dev_splits_complete" / f"{uid}.mp4", folder / f"{uid}.mp4")
    srt = folder / f"{uid}.srt"
    srt.write_text(f"1\n00:00:00,000 --> 00:10:00,000\n{text}\n", encoding="utf-8")
    return Path(clip), srt


def _probs(utterance: dict) -> tuple[list[float], list[float]]:
    return ([utterance["emotion_probs"][e] for e in EMOTIONS], [utterance["sentiment_probs"][s] for s in SENTIMENTS])


def test_analyze_with_a_trained_checkpoint_matches_evaluate(corpus, checkpoint, evaluated, tmp_path):
    clip, srt = _clip_with_subtitles(corpus, tmp_path / "in")
    mmva("analyze", str(clip), "--subtitles", str(srt), "--model", str(checkpoint), "-o", str(tmp_path / "out"),
         "--quiet")
    result = json.loads((tmp_path / "out" / f"{CLIP}.mmva.json").read_text())
    (utt,) = result["utterances"]
    expected = evaluated[f"dev/{CLIP}"]
    emotion, sentiment = _probs(utt)
    np.testing.assert_allclose(emotion, expected["emotion_probs"], atol=TOLERANCE)
    np.testing.assert_allclose(sentiment, expected["sentiment_probs"], atol=TOLERANCE)
    assert utt["emotions"][0]["label"] == expected["emotion"] or \
        abs(utt["emotion_probs"][expected["emotion"]] - utt["emotions"][0]["confidence"]) <= TOLERANCE
    assert utt["modalities"] == ["text", "video", "audio"]
    model = result["model"]
    assert model["kind"] == "checkpoint" and model["config"] == "tiny" and model["name"] == "last.safetensors"
    assert model["digest"] == "sha256:" + hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert model["encoders"] == {"text": "tiny-text", "video": "tiny-video", "audio": "logmel-cnn"}


def test_the_python_api_takes_the_same_model(corpus, checkpoint, evaluated, tmp_path):
    import mmva as api

    clip, srt = _clip_with_subtitles(corpus, tmp_path)
    timeline = api.analyze(str(clip), subtitles=str(srt), model=str(checkpoint))
    emotion, sentiment = _probs(timeline.utterances[0].to_dict()["extra"])
    np.testing.assert_allclose(emotion, evaluated[f"dev/{CLIP}"]["emotion_probs"], atol=TOLERANCE)
    assert timeline.model["digest"] == file_digest(checkpoint)
    # Text only (analyze-text): the checkpoint's own text encoder, no media modality claimed.
    (text,) = api.analyze_text(["I am so happy right now."], model=str(checkpoint))
    assert text["modalities"] == ["text"] and len(text["emotions"]) == 3


def test_serve_answers_with_the_checkpoint(corpus, checkpoint, tmp_path):
    server = ServerProcess(tmp_path / "work", "--model", str(checkpoint), "--workers", "1", env=_env()).start()
    try:
        with server.client() as client:
            _assert_served(client, corpus, file_digest(checkpoint), "last.safetensors")
    finally:
        server.stop()


def test_packaged_model_is_served_the_sagemaker_way(corpus, checkpoint, tmp_path):
    """model.tar.gz, extracted as SageMaker does into /opt/ml/model, served by the container's
    entry script (docker/serve -> `mmva serve --model-dir /opt/ml/model`)."""
    archive = tmp_path / "model.tar.gz"
    mmva("sagemaker", "package", str(checkpoint), str(archive))
    opt_ml_model = tmp_path / "opt" / "ml" / "model"
    opt_ml_model.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        package.safe_extractall(tar, opt_ml_model)
    server = ServerProcess(tmp_path / "work", "--workers", "1", container_entry=True,
                           env=_env(MMVA_MODEL_DIR=str(opt_ml_model))).start()
    try:
        with server.client() as client:
            _assert_served(client, corpus, file_digest(checkpoint), "model.safetensors")
    finally:
        server.stop()


def _assert_served(client, corpus: Path, digest: str, name: str) -> None:
    clip = corpus / "dev_splits_complete" / f"{CLIP}.mp4"
    reply = client.post("/invocations", content=clip.read_bytes(),
                        headers={"Content-Type": "video/mp4", "X-Filename": clip.name})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"]["kind"] == "checkpoint" and body["model"]["digest"] == digest
    assert body["source"] == clip.name and body["utterances"], body
    for utt in body["utterances"]:
        assert set(utt["modalities"]) <= {"text", "video", "audio"} and "video" in utt["modalities"]
        assert abs(sum(utt["emotion_probs"].values()) - 1) < 1e-3
    text = client.post("/invocations", json={"text": ["I am so happy right now."]})
    assert text.status_code == 200, text.text
    assert text.json()["model"]["digest"] == digest
    assert text.json()["utterances"][0]["modalities"] == ["text"]
    assert client.get("/info").json()["model"] == name


def test_models_at_s3_uris_are_fetched_once(checkpoint, s3_bucket, tmp_path, monkeypatch):
    from mmva.io import storage
    from mmva.model.default import default_model_dir

    monkeypatch.setenv("MMVA_MODEL_CACHE", str(tmp_path / "cache"))
    uri = f"{s3_bucket}/runs/tiny/last.safetensors"
    storage.upload_file_atomic(checkpoint, uri)
    predictor = load_predictor(uri)
    assert isinstance(predictor, CheckpointPredictor)
    assert predictor.describe()["digest"] == file_digest(checkpoint)
    assert predictor.describe()["name"] == "last.safetensors"
    (cached,) = [p for p in (tmp_path / "cache").rglob("*.safetensors")]
    stamp = cached.stat().st_mtime_ns
    assert load_predictor(uri) is predictor and cached.stat().st_mtime_ns == stamp  # not fetched again

    folder = f"{s3_bucket}/models/default"
    storage.copy_tree(str(default_model_dir()), folder)
    default = load_predictor(folder)
    assert default.describe()["kind"] == "default-model"
    assert default.describe()["digest"] == load_predictor().describe()["digest"] == folder_digest(default_model_dir())

    # The CLI too: analyze-text with an s3:// checkpoint.
    done = mmva("analyze-text", "I am so happy right now.", "--model", uri,
                env=_env(**aws_environment(os.environ["AWS_ENDPOINT_URL"]), MMVA_MODEL_CACHE=str(tmp_path / "c2")))
    assert json.loads(done.stdout)[0]["modalities"] == ["text"]


def test_the_default_model_keeps_its_outputs_through_the_interface():
    from mmva.model.default import load_default_model

    predictor = load_predictor()
    assert predictor is load_default_model() and not getattr(predictor, "decodes_media", False)
    texts = ["I am so happy for you!", ""]
    with_sources = predictor.predict(texts, sources=[("talk.mp4", 0.0, 1.0), None])
    for a, b in zip(predictor.predict(texts), with_sources):
        assert a["modalities"] == b["modalities"]
        np.testing.assert_array_equal(a["emotion"], b["emotion"])
        np.testing.assert_array_equal(a["sentiment"], b["sentiment"])
    info = predictor.describe()
    assert info["kind"] == "default-model" and info["digest"].startswith("sha256:") and info["name"] == "mmva-default"


def test_files_that_are_not_models_are_refused_naming_them(corpus, tmp_path):
    notes = tmp_path / "notes.safetensors"
    notes.write_text("not a model")
    clip = corpus / "dev_splits_complete" / f"{CLIP}.mp4"
    done = mmva("analyze", str(clip), "--model", str(notes), "-o", str(tmp_path), env=_env(COLUMNS="400"),
                check=False)
    assert done.returncode == 2 and str(notes) in done.stdout + done.stderr
    assert "not a safetensors file" in done.stdout + done.stderr
    assert not list(tmp_path.glob("*.mmva.json"))

    from safetensors.torch import save_file
    import torch

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="foreign.safetensors: a safetensors file, but not an mmva checkpoint"):
        load_predictor(str(foreign))
    with pytest.raises(FileNotFoundError, match="missing.safetensors: no such model"):
        load_predictor(str(tmp_path / "missing.safetensors"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("hello")
    with pytest.raises(ValueError, match=f"{empty}: no .safetensors file"):
        load_predictor(str(empty))


def test_a_checkpoint_loads_without_fetching_pretrained_weights(tmp_path, caplog, monkeypatch):
    """R3D-18 and BERT-base are built bare: their weights come from the checkpoint, so no download
    (and no 'weights not found' fallback) is attempted."""
    from mmva.config import load_config
    from mmva.encoders.base import encoder_class
    from mmva.model.checkpoint import load_model, save_checkpoint
    from mmva.model.multimodal import MultimodalSentimentAnalyzer

    assert encoder_class("r3d18").untrained_options({"weights": "/x.pth", "num_frames": 4}) == \
        {"num_frames": 4, "pretrained": False}
    assert encoder_class("bert-base-uncased").untrained_options({"max_tokens": 16})["pretrained"] is False
    assert encoder_class("minilm").untrained_options({"weights": "/x"}) == {"pretrained": False}
    cfg = load_config("tiny", ["model.video=r3d18", "model.text=minilm", "data.num_frames=4"])
    path = tmp_path / "m.safetensors"
    save_checkpoint(MultimodalSentimentAnalyzer(cfg, pretrained=False), cfg, path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache: nothing to find
    caplog.clear()
    caplog.set_level(logging.INFO)
    model = load_model(path)
    assert not [r for r in caplog.records if "weights not found" in r.getMessage()], caplog.text
    assert not (tmp_path / "torch-home").exists()
    assert model.encoders["video"].weights_source() == "random init"  # as recorded in the checkpoint


@pytest.mark.slow
def test_reference_architecture_runs_through_the_same_path(corpus, tmp_path):
    """BERT-base + R3D-18 + log-mel CNN with random initialisation, saved as a checkpoint: analyze
    --model on a short clip agrees with evaluate's predictions for it."""
    import torch

    from mmva.config import load_config
    from mmva.model.checkpoint import save_checkpoint
    from mmva.model.multimodal import MultimodalSentimentAnalyzer
    from mmva.train.evaluate import evaluate

    torch.manual_seed(0)
    cfg = load_config("reference", ["data.num_frames=8", "data.frame_size=112", "data.batch_size=4"])
    path = tmp_path / "reference.safetensors"
    save_checkpoint(MultimodalSentimentAnalyzer(cfg).eval(), cfg, path)
    preds = tmp_path / "preds.jsonl"
    evaluate(str(path), str(corpus), "dev", predictions=str(preds))
    expected = {r["uid"]: r for r in map(json.loads, preds.read_text().splitlines())}[f"dev/{CLIP}"]
    clip, srt = _clip_with_subtitles(corpus, tmp_path / "in")
    mmva("analyze", str(clip), "--subtitles", str(srt), "--model", str(path), "-o", str(tmp_path / "out"), "--quiet")
    result = json.loads((tmp_path / "out" / f"{CLIP}.mmva.json").read_text())
    emotion, sentiment = _probs(result["utterances"][0])
    np.testing.assert_allclose(emotion, expected["emotion_probs"], atol=TOLERANCE)
    np.testing.assert_allclose(sentiment, expected["sentiment_probs"], atol=TOLERANCE)
    assert result["model"]["config"] == "reference"
    assert result["model"]["encoders"] == {"text": "bert-base-uncased", "video": "r3d18", "audio": "logmel-cnn"}
