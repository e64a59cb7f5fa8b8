"""The voice and face heads of issue 13: their recipes on real generated media, and the shipped heads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmva.labels import EMOTIONS
from tests.media import silence, speak, write_wav

ANGER, DISGUST, NEUTRAL, SADNESS = (EMOTIONS.index(e) for e in ("anger", "disgust", "neutral", "sadness"))


# -- voice: the loss over each corpus's own classes -------------------------------------------------
def test_a_corpus_without_a_class_never_learns_against_it() -> None:
    import torch

    from mmva.train.voice_head import HeadSpec, corpus_label_masks, fit_head, sample_weights

    labels = np.array([ANGER] * 10 + [NEUTRAL] * 10 + [DISGUST] * 10 + [NEUTRAL] * 10)
    corpora = ["a"] * 20 + ["b"] * 20
    mask, classes = corpus_label_masks(labels, corpora)
    assert classes == {"a": [ANGER, NEUTRAL], "b": [DISGUST, NEUTRAL]}
    assert mask[0].tolist() == [i in (ANGER, NEUTRAL) for i in range(7)]
    w = sample_weights(labels, corpora)
    assert w.mean() == pytest.approx(1.0) and len(set(np.round(w, 6))) == 1  # balanced cells, equal corpora
    # corpus "a" clips sit where corpus "b" disgust clips do: with the masked loss, "a" never says
    # "not disgust", so disgust stays the head's answer there; an unmasked loss would fight over it.
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, (40, 4)).astype(np.float32)
    x[:10, 0] += 3  # anger of a
    x[20:30, 0] += 3  # disgust of b, the same place
    head = fit_head(x, labels, corpora, HeadSpec(epochs=200, lr=1e-2, dropout=0.0))
    with torch.no_grad():
        p = torch.softmax(head(torch.from_numpy(x[:10])), -1).numpy().mean(0)
    # (classes no corpus has keep their untrained share: in the real union every class has a corpus)
    assert set(np.argsort(-p)[:2].tolist()) == {ANGER, DISGUST} and min(p[ANGER], p[DISGUST]) > 3 * p[NEUTRAL]


# -- voice: the recipe end to end on generated speech ------------------------------------------------
@pytest.fixture(scope="module")
def speech_corpora(tmp_path_factory):
    """Two 'corpora' (different espeak voices), three speakers each; excited vs flat delivery."""
    root = tmp_path_factory.mktemp("speech")
    rows = []
    voices = {"c1": [("en-us", 0), ("en-us+m3", 10), ("en-us+f2", 20)],
              "c2": [("en-gb-x-rp", 0), ("en-gb+m7", 10), ("en-gb+f4", 20)]}
    words = ("table", "window", "station", "river", "morning", "garden")
    for corpus, speakers in voices.items():
        for voice, shift in speakers:
            for k, word in enumerate(words):
                for emotion, kw in (("anger", {"pitch": 70 + shift // 2, "amplitude": 190, "speed": 230}),
                                    ("sadness", {"pitch": 15 + shift // 4, "amplitude": 50, "speed": 110})):
                    path = write_wav(root / f"{corpus}_{voice}_{word}_{emotion}.wav",
                                     speak(f"say the word {word}", voice=voice, **kw))
                    rows.append({"path": str(path), "emotion": emotion, "speaker": f"{corpus}-{voice}",
                                 "corpus": corpus})
    manifest = root / "speech.csv"
    manifest.write_text("path,text,emotion,sentiment,speaker,corpus\n" + "".join(
        f"{r['path']},,{r['emotion']},negative,{r['speaker']},{r['corpus']}\n" for r in rows))
    return manifest


def test_voice_fit_scores_unseen_corpora_and_writes_a_head_that_loads(speech_corpora, tmp_path) -> None:
    from typer.testing import CliRunner

    from mmva.cli import app
    from mmva.model.voice import load_voice_head

    out = tmp_path / "head"
    res = CliRunner().invoke(app, ["voice-fit", "--data", str(speech_corpora), "--out", str(out),
                                   "--work", str(tmp_path / "work"), "--loso-splits", "3"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "voice.json").read_text())
    assert cfg["format"] == "mmva-voice-head-3" and set(cfg["heads"]) == {"utterance", "speaker"}
    loco = cfg["scores"]["speaker"]["loco_per_corpus"]
    assert set(loco) == {"c1", "c2"}
    # excited vs flat speech of another corpus's voices: well above the 50% of a coin
    assert min(m["uar"] for m in loco.values()) >= 0.75
    assert cfg["scores"]["speaker"]["loso"]["folds"] == 3
    assert all(h["temperature"] > 0 for h in cfg["heads"].values())
    # the recipe's head settings are recorded: heavy input dropout for the per-speaker head (the
    # leave-one-corpus-out winner, docs/voice.md), the default for the single-clip head
    assert cfg["heads"]["speaker"]["spec"]["dropout"] == 0.7 and cfg["heads"]["utterance"]["spec"]["dropout"] == 0.2
    head = load_voice_head(str(out))
    assert head.encoder_name == "whisper+acoustic"
    excited = speak("say the word pencil", voice="en-us+m3", pitch=75, amplitude=190, speed=230)
    flat = speak("say the word pencil", voice="en-us+m3", pitch=15, amplitude=50, speed=110)
    pe, pf = head.predict_proba(excited), head.predict_proba(flat)
    assert pe[ANGER] > pf[ANGER] and pf[SADNESS] > pe[SADNESS]
    # the per-speaker head normalises one recording's clips together
    batch = head.predict_proba_batch([excited, flat] * 3, same_speaker=True)
    assert all(p is not None for p in batch) and batch[0][ANGER] > batch[1][ANGER]
    # the feature tables are cached for a second run (resumable)
    assert (tmp_path / "work" / "whisper-b12.npz").exists() and (tmp_path / "work" / "acoustic.npz").exists()
    # the feature is Whisper's middle blocks (1 and 2), recorded for analyze to compute the same
    assert cfg["feature"]["blocks"] == [1, 2] and head.feature["blocks"] == [1, 2]


def test_voice_fit_refuses_a_manifest_without_corpus_and_speaker(tmp_path) -> None:
    from typer.testing import CliRunner

    from mmva.cli import app

    m = tmp_path / "m.csv"
    m.write_text("path,emotion\n/a.wav,joy\n")
    res = CliRunner().invoke(app, ["voice-fit", "--data", str(m), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "corpus" in res.output and "speaker" in res.output


# -- the shipped voice head --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped_voice():
    from mmva.model.voice import load_voice_head

    return load_voice_head()


def test_shipped_voice_head_is_the_whisper_head_and_masks_silence(shipped_voice) -> None:
    from mmva.encoders.acoustic import acoustic_features
    from mmva.encoders.whisper_states import WhisperBlockStates

    assert shipped_voice.encoder_name == "whisper+acoustic"
    assert shipped_voice.predict_proba(silence(1.0)) is None
    clip = speak("we are going to the station tomorrow")
    p = shipped_voice.predict_proba(clip)
    assert p.shape == (7,) and abs(float(p.sum()) - 1) < 1e-5
    # its input is the pooled middle-block states of the ASR's Whisper model, then the acoustic statistics
    feats = shipped_voice.features_batch([clip])[0]
    assert np.allclose(feats[:768], WhisperBlockStates(None, (1, 2)).pooled(clip), atol=1e-6)
    assert np.allclose(feats[768:], acoustic_features(clip, 16000), atol=1e-6)


def test_shipped_speaker_head_is_the_regularised_one_and_scores_what_its_card_says(shipped_voice) -> None:
    """The shipped per-speaker head reads Whisper's middle blocks 1-2 (LOCO mean UAR 43.1 -> 50.5 % over
    the last layer), was fitted with input dropout 0.7, and its recorded out-of-corpus scores back the
    README/model card figures (the issue's aims: 50 % mean UAR, no class above a third of any corpus's
    predictions); the files stay small."""
    from pathlib import Path

    cfg = shipped_voice.config
    assert cfg["heads"]["speaker"]["spec"]["dropout"] == 0.7 and cfg["heads"]["speaker"]["hidden"] == 0
    loco = cfg["scores"]["speaker"]["loco"]
    assert loco["uar_mean"] >= 0.50 and round(100 * loco["uar_mean"], 1) == 50.5
    assert max(m["max_predicted_share"] for m in cfg["scores"]["speaker"]["loco_per_corpus"].values()) < 1 / 3
    assert shipped_voice.feature["blocks"] == [1, 2]
    folder = Path(shipped_voice.source)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5_000_000
    # the runtime head is the trained one (dropout is off at inference: the same clip, the same answer)
    clips = [speak(f"the number {k} is on the list", voice="en-us", pitch=40 + 5 * k) for k in range(5)]
    a = shipped_voice.predict_proba_batch(clips, same_speaker=True)
    b = shipped_voice.predict_proba_batch(clips, same_speaker=True)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))


def test_shipped_voice_head_is_unsure_on_plain_read_speech(shipped_voice) -> None:
    """Neutral read sentences from a voice outside training (espeak-ng): the head must not claim a
    confident emotion; a flat-ish distribution (no class near certainty) is the honest answer."""
    sentences = ("the meeting is on tuesday at ten", "please put the books on the second shelf",
                 "the train leaves from platform four", "we bought bread and milk this morning")
    probs = np.stack([shipped_voice.predict_proba(speak(s, voice="en-us", pitch=50, speed=165)) for s in sentences])
    assert probs.max() < 0.6, probs.round(2)
    entropy = -(probs * np.log(probs)).sum(1) / np.log(7)
    assert entropy.mean() > 0.6, entropy.round(2)


# -- face --------------------------------------------------------------------------------------------
def test_shipped_face_head_is_mmvas_own_network() -> None:
    from skimage.data import astronaut

    from mmva.encoders.face import detect_and_classify, shared_head

    head = shared_head(None)
    assert head.kind == "mmva-face-net" and head.size == 48 and head.temperature > 0
    result = detect_and_classify(astronaut())
    assert result is not None and result.embedding.shape == (256,)
    assert EMOTIONS[int(result.probs.argmax())] == "joy"  # she is smiling
    meta = json.loads((__import__("pathlib").Path(head.source).parent / "face.json").read_text())
    assert meta["ferplus_test"]["accuracy"] > 0.8 and "jaffe" in meta


def test_face_training_resumes_where_it_stopped(tmp_path) -> None:
    """Two epochs in one go equal one epoch, a stop, and a resumed second epoch."""
    from skimage.data import astronaut
    from skimage.transform import resize

    from mmva.train.face_train import train_face

    grey = resize(astronaut().mean(2), (48, 48), preserve_range=True)
    rng = np.random.default_rng(0)
    n = 96
    images = np.clip(grey[None] + rng.normal(0, 20, (n, 48, 48)), 0, 255).astype(np.uint8)
    votes = np.zeros((n, 10), np.uint8)
    votes[np.arange(n), rng.integers(0, 8, n)] = 10
    split = np.array([0] * 64 + [1] * 16 + [2] * 16, np.uint8)
    path = tmp_path / "fer.npz"
    np.savez(path, images=images, votes=votes, split=split, name=np.array([f"f{i}" for i in range(n)]))
    full = train_face(str(path), str(tmp_path / "full"), epochs=2, batch_size=32, threads=1)
    stopped = train_face(str(path), str(tmp_path / "part"), epochs=2, batch_size=32, threads=1, stop_after=1)
    assert stopped["stopped"] == 1 and (tmp_path / "part" / "state.pt").exists()
    resumed = train_face(str(path), str(tmp_path / "part"), epochs=2, batch_size=32, threads=1)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][-1]["train_loss"] == pytest.approx(full["history"][-1]["train_loss"], rel=1e-4)


def test_a_voice_head_of_the_previous_format_still_reads_whispers_last_layer(tmp_path) -> None:
    """A head fitted before issue 13's layer study (format 2, no "blocks") keeps its feature: the
    last encoder layer, through the speech recogniser's own CTranslate2 model and under its lock
    (the next window's transcription may run at the same time)."""
    import shutil

    from mmva.analyze.asr import load_asr
    from mmva.encoders.whisper_states import WhisperStates, shared_states
    from mmva.model.voice import load_voice_head

    old = tmp_path / "old-head"
    shutil.copytree(load_voice_head().source, old)
    cfg = json.loads((old / "voice.json").read_text())
    cfg["format"], cfg["version"] = "mmva-voice-head-2", 2
    cfg["feature"].pop("blocks")
    (old / "voice.json").write_text(json.dumps(cfg))
    head = load_voice_head(str(old))
    clip = speak("we are going to the station tomorrow")
    feats = head.features_batch([clip])[0]
    states = shared_states(None)
    assert isinstance(states, WhisperStates) and states._lock is load_asr(None, "cpu")._mmva_lock
    assert np.allclose(feats[:768], states.pooled(clip), atol=1e-6)
    p = head.predict_proba(clip)
    assert p.shape == (7,) and np.isfinite(p).all()
