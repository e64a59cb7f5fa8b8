"""The voice head (contract G), its recipe and the cross-validation driver, on real generated speech."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mmva.labels import EMOTIONS
from mmva.model.voice import has_voice, load_voice_head
from tests.media import silence, speak, tone, write_wav

SENTENCES = ("I cannot believe what just happened here", "we are going to the station tomorrow",
             "look at the window now", "she told me the news this morning", "put the box on the table")
HIGH_AROUSAL = [EMOTIONS.index(e) for e in ("anger", "fear", "joy", "surprise")]
LOW_AROUSAL = [EMOTIONS.index(e) for e in ("neutral", "sadness")]


@pytest.fixture(scope="module")
def head():
    return load_voice_head()  # the head shipped in the package: must load offline


def test_shipped_head_predicts_on_a_wav_file(head, tmp_path) -> None:
    from mmva.io.media import read_audio

    path = write_wav(tmp_path / "hello.wav", speak("hello, I am really happy to see you"))
    probs = head.predict_proba(read_audio(path), 16000)
    assert probs is not None and probs.shape == (len(EMOTIONS),)
    assert np.isfinite(probs).all() and (probs >= 0).all() and abs(probs.sum() - 1) < 1e-5
    top = head.predict(read_audio(path), top_k=3)
    assert [t["label"] for t in top][0] == EMOTIONS[int(np.argmax(probs))] and len(top) == 3
    assert head.encoder_name == "whisper+acoustic" and head.labels == EMOTIONS


def test_no_speech_is_none_not_a_guess(head) -> None:
    noise = np.random.default_rng(1).normal(0, 0.1, 16000).astype(np.float32)
    quiet = (tone(1.0) * 1e-4).astype(np.float32)
    for audio in (silence(2.0), quiet, noise, np.zeros(0, np.float32), None):
        assert head.predict_proba(audio) is None
        assert head.predict(audio) is None
    out = head.predict_proba_batch([silence(1.0), speak("good morning to you"), None])
    assert out[0] is None and out[2] is None and out[1] is not None
    assert not has_voice(silence(1.0)) and has_voice(speak("yes"))


def test_other_sample_rates_are_resampled(head) -> None:
    import librosa

    voice = speak("we are going to the station tomorrow")
    p16 = head.predict_proba(voice, 16000)
    p44 = head.predict_proba(librosa.resample(voice, orig_sr=16000, target_sr=44100), 44100)
    assert np.abs(p16 - p44).max() < 0.1


def _arousal(probs: list[np.ndarray]) -> float:
    p = np.stack(probs)
    return float((p[:, HIGH_AROUSAL].sum(1) - p[:, LOW_AROUSAL].sum(1)).mean())


def test_raised_pitch_energy_rate_moves_towards_high_arousal(head) -> None:
    """The same espeak-ng sentences, excited (high, loud, fast) vs flat (low, soft, slow), scored as
    one speaker's session (per-speaker normalisation, the speaker head): the excited versions get
    more high-arousal mass (anger/fear/joy/surprise minus neutral/sadness), on average by a clear
    margin and for every sentence. A head that ignored prosody would give equal masses."""
    excited = [speak(s, pitch=90, amplitude=190, speed=230) for s in SENTENCES]
    flat = [speak(s, pitch=15, amplitude=40, speed=120) for s in SENTENCES]
    probs = head.predict_proba_batch(excited + flat, same_speaker=True)
    assert all(p is not None for p in probs)
    p_exc, p_flat = probs[: len(SENTENCES)], probs[len(SENTENCES):]
    assert _arousal(p_exc) - _arousal(p_flat) > 0.2
    for a, b in zip(p_exc, p_flat):  # per sentence, not just on average
        assert _arousal([a]) > _arousal([b])
    anger, neutral = EMOTIONS.index("anger"), EMOTIONS.index("neutral")
    assert np.mean([p[anger] for p in p_exc]) > np.mean([p[anger] for p in p_flat])
    assert np.mean([p[neutral] for p in p_flat]) > np.mean([p[neutral] for p in p_exc])


def test_speaker_normalised_batch(head) -> None:
    """With >= min_speaker_utterances clips of one speaker the speaker head scores them; fewer
    clips fall back to the utterance head; silence stays None in either path."""
    clips = [speak(s, pitch=p, speed=r) for s in SENTENCES for p, r in ((30, 140), (90, 220))]
    assert len(clips) >= head.min_speaker_utterances
    together = head.predict_proba_batch(clips + [silence(1.0)], same_speaker=True)
    assert together[-1] is None and all(p is not None and abs(p.sum() - 1) < 1e-5 for p in together[:-1])
    if head.speaker_head is not None:
        alone = head.predict_proba_batch(clips)
        assert not np.allclose(np.stack(together[:-1]), np.stack(alone))  # a different normalisation
        few = head.predict_proba_batch(clips[:2], same_speaker=True)
        assert np.allclose(np.stack(few), np.stack(alone[:2]), atol=1e-6)  # too few: utterance head


def test_missing_head_folder_names_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="voice.json"):
        load_voice_head(str(tmp_path))


# -- calibration helpers ---------------------------------------------------------------------------
def test_temperature_softens_overconfident_logits() -> None:
    from mmva.train.crossval import calibration_error, fit_temperature, softmax

    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 1000)
    clean = rng.normal(0, 1, (1000, 7))
    clean[np.arange(1000), y] += 1.5  # a classifier right ~50% of the time ...
    logits = clean * 4  # ... but four times over-confident
    t = fit_temperature(logits, y)
    assert 2.5 < t < 6
    assert calibration_error(softmax(logits, t), y) < 0.5 * calibration_error(softmax(logits), y)


# -- the recipe, end to end on generated speech ----------------------------------------------------
def _tiny_corpus(root) -> None:
    """Two synthetic 'corpora' of two espeak-ng voices each; 'anger' is excited, 'sadness' flat."""
    styles = {"anger": dict(pitch=85, amplitude=180, speed=220), "sadness": dict(pitch=20, amplitude=60, speed=120)}
    voices = {"alpha": ("en-us", "en-gb"), "beta": ("en-gb-scotland", "en-029")}
    words = ("dog", "chair", "rain", "green")
    for corpus, vs in voices.items():
        (root / corpus / "wav").mkdir(parents=True)
        with open(root / corpus / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "emotion", "source_label", "speaker", "sentence_or_text", "intensity"])
            for v in vs:
                for emo, style in styles.items():
                    for word in words:
                        name = f"wav/{v}_{word}_{emo}.wav"
                        write_wav(root / corpus / name, speak(f"say the word {word}", voice=v, **style))
                        w.writerow([name, emo, emo, f"{corpus}_{v}", "", ""])
            w.writerow(["wav/missing.wav", "anger", "a", f"{corpus}_{vs[0]}", "", ""])
            w.writerow([f"wav/{vs[0]}_dog_anger.wav", "bored", "b", f"{corpus}_{vs[0]}", "", ""])


def test_speech_manifest_crossval_and_voice_train(tmp_path) -> None:
    """The whole recipe on 32 generated clips: manifest CLI -> LOSO through fit() -> shipped-format head."""
    from mmva.cli import app

    _tiny_corpus(tmp_path / "speech")
    runner = CliRunner()
    manifest = tmp_path / "speech.csv"
    res = runner.invoke(app, ["speech-manifest", str(tmp_path / "speech"), str(manifest)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(manifest)))
    assert len(rows) == 32 and {r["corpus"] for r in rows} == {"alpha", "beta"}
    text = res.output.replace("\n", "")
    assert "missing.wav" in text and "bored" in text  # bad rows reported, not fatal
    assert {r["sentiment"] for r in rows} == {"negative"}

    sets = ["--set", "train.epochs=12", "--set", "data.batch_size=8", "--set", "train.patience=12",
            "--set", f"train.cache_dir={tmp_path / 'features'}"]
    res = runner.invoke(app, ["crossval", "--data", str(manifest), "--group", "speaker", "--normalization", "speaker",
                              "--only", "alpha_en-us", "--only", "beta_en-029", "--out", str(tmp_path / "cv"), *sets])
    assert res.exit_code == 0, res.output
    cv = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    assert [f["name"] for f in cv["folds"]] == ["speaker=alpha_en-us", "speaker=beta_en-029"]
    for fold in cv["folds"]:
        assert fold["n_test"] == 8 and len(fold["metrics"]["confusion_matrix"]) == len(EMOTIONS)
    # excited vs flat speech of unseen voices: far above the 50% of guessing between two classes
    assert cv["summary"]["accuracy_mean"] >= 0.8
    assert cv["summary"]["temperature"] > 0

    from mmva.config import load_config
    from mmva.train.crossval import train_voice_head

    out = tmp_path / "head"
    cfg = load_config("voice", ["train.epochs=10", "data.batch_size=8", "train.patience=10",
                                f"train.cache_dir={tmp_path / 'features'}"])
    train_voice_head(str(manifest), str(out), cfg, work_dir=str(tmp_path / "work"), cross_validate=False)
    assert json.loads((out / "voice.json").read_text())["heads"]["speaker"]["standardizer"]["mean"]
    head = load_voice_head(str(out))
    assert head.speaker_head is not None
    excited = head.predict_proba(speak("say the word table", voice="en-gb-x-rp", pitch=85, amplitude=180, speed=220))
    flat = head.predict_proba(speak("say the word table", voice="en-gb-x-rp", pitch=20, amplitude=60, speed=120))
    anger, sad = EMOTIONS.index("anger"), EMOTIONS.index("sadness")
    assert excited[anger] > flat[anger] and flat[sad] > excited[sad]


def test_crossval_refuses_a_manifest_without_the_group_column(tmp_path) -> None:
    from mmva.cli import app

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,emotion\n/a.wav,joy\n/b.wav,anger\n")
    res = CliRunner().invoke(app, ["crossval", "--data", str(manifest), "--out", str(tmp_path / "cv")])
    assert res.exit_code == 2 and "no 'speaker' column" in res.output.replace("\n", "")


def test_speech_measured_by_the_caller_spares_the_vad_and_gives_the_same_probabilities(head) -> None:
    """mmva analyze passes each utterance's speech seconds from the window's voice activity
    (speech_seconds): the same features as the head's own VAD pass where there is speech, and the
    modality absent where the caller found less than 0.1 s of it."""
    rng = np.random.default_rng(0)
    voice = speak("I cannot believe you did that again")
    noise = (0.2 * rng.standard_normal(16000)).astype(np.float32)
    own = head.predict_proba_batch([voice, noise], 16000)
    assert own[0] is not None and own[1] is None  # loud noise is not speech to the VAD
    given = head.predict_proba_batch([voice, noise], 16000, speech_seconds=[1.2, 0.0])
    np.testing.assert_allclose(given[0], own[0], atol=1e-6)
    assert given[1] is None
    assert head.predict_proba_batch([voice], 16000, speech_seconds=[0.05]) == [None]
    with pytest.raises(ValueError, match="speech_seconds has 1 items for 2 clips"):
        head.predict_proba_batch([voice, noise], 16000, speech_seconds=[1.0])
