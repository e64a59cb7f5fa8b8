"""The generated corpus: MELD layout, real H.264/AAC files, and every modality carrying the label."""

from __future__ import annotations

import csv
from collections import Counter

import av
import numpy as np
import torch
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from mmva.data import load_corpus, make_corpus
from mmva.io.features import log_mel
from mmva.io.media import decode_clip, probe
from mmva.labels import EMOTIONS


def test_layout_codecs_and_balance(generated_corpus):
    for split, folder in (("train", "train_splits"), ("dev", "dev_splits_complete")):
        corpus = load_corpus(str(generated_corpus), split)
        assert corpus.problems == [] and len(corpus) == 42
        assert Counter(u.emotion for u in corpus.utterances) == {e: 6 for e in EMOTIONS}
        assert all(u.path and u.path.startswith(str(generated_corpus / folder)) for u in corpus.utterances)
        assert any(u.extra["context"] for u in corpus.utterances)  # dialogues of several turns
    path = load_corpus(str(generated_corpus), "dev").utterances[0].path
    with av.open(path) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
    info = probe(path)
    assert (info.width, info.height, info.fps) == (64, 64, 8.0) and 0.8 < info.duration < 3.5


def test_same_seed_same_corpus(tmp_path):
    a = make_corpus(tmp_path / "a", n_per_class=1, seed=3, splits=("dev",))
    b = make_corpus(tmp_path / "b", n_per_class=1, seed=3, splits=("dev",))
    c = make_corpus(tmp_path / "c", n_per_class=1, seed=4, splits=("dev",))
    text = lambda root: (root / "dev_sent_emo.csv").read_text()  # noqa: E731
    assert text(a) == text(b) != text(c)
    clip = sorted((a / "dev_splits_complete").iterdir())[0]
    assert decode_clip(clip).frames.tobytes() == decode_clip(b / "dev_splits_complete" / clip.name).frames.tobytes()


def _features(root, split):
    """Deliberately simple per-modality features: if these separate the classes, the cues are real."""
    corpus = load_corpus(str(root), split)
    texts, video, audio, labels = [], [], [], []
    for utt in corpus.utterances:
        clip = decode_clip(utt.path, num_frames=4, max_side=64)
        f = clip.frames.astype(np.float32) / 255.0  # (t, h, w, 3)
        half = f.shape[2] // 2
        video.append(np.concatenate([f.mean((0, 1, 2)), f.std((0, 1, 2)),
                                     [f[:, :, :half].mean() - f[:, :, half:].mean(), np.abs(np.diff(f, axis=0)).mean()]]))
        mel = log_mel(clip.audio, normalize=False, frames=None)[0].numpy()  # (64, t)
        loud = mel.mean(0) > mel.mean(0).max() - 4  # frames with speech
        audio.append(np.concatenate([mel[:, loud].mean(1), mel[:, loud].std(1), [loud.sum() / len(clip.audio) * 1e4]]))
        texts.append(utt.text)
        labels.append(EMOTIONS.index(utt.emotion))
    return texts, np.array(video), np.array(audio), np.array(labels)


def test_each_modality_carries_the_label_and_fusion_helps(generated_corpus):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny STFTs: thread start-up costs 100x the work on a loaded 2-core box
    try:
        t_tr, v_tr, a_tr, y_tr = _features(generated_corpus, "train")
        t_dev, v_dev, a_dev, y_dev = _features(generated_corpus, "dev")
    finally:
        torch.set_num_threads(threads)
    words = CountVectorizer().fit(t_tr)
    w_tr, w_dev = words.transform(t_tr).toarray(), words.transform(t_dev).toarray()

    probs, acc = {}, {}
    for m, (x_tr, x_dev) in {"text": (w_tr, w_dev), "video": (v_tr, v_dev), "audio": (a_tr, a_dev)}.items():
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=0.3)).fit(x_tr, y_tr)
        acc[m], probs[m] = clf.score(x_dev, y_dev), clf.predict_proba(x_dev)
    acc["fusion"] = float((sum(probs.values()).argmax(1) == y_dev).mean())  # late fusion: mean probability
    chance = 1 / 7
    assert all(acc[m] > 2 * chance for m in ("text", "video", "audio")), acc
    assert acc["fusion"] > max(acc["text"], acc["video"], acc["audio"]), acc


def test_cues_are_recorded_and_agree_with_the_label_mostly(generated_corpus):
    rows = list(csv.DictReader(open(generated_corpus / "train_sent_emo.csv", encoding="utf-8")))
    for key in ("TextCue", "VoiceCue", "FaceCue"):
        agree = np.mean([r[key] == r["Emotion"] for r in rows])
        assert 0.5 < agree < 1.0, (key, agree)  # informative, never perfect: fusion has work to do
    from mmva.data.synth import WORDS

    assert all(any(w in r["Utterance"] for w in WORDS[r["TextCue"]]) for r in rows)


def test_make_corpus_command(tmp_path):
    from mmva.cli import app

    result = CliRunner().invoke(app, ["make-corpus", str(tmp_path / "toy"), "-n", "1", "--splits", "dev",
                                      "--size", "48"])
    assert result.exit_code == 0, result.output
    corpus = load_corpus(str(tmp_path / "toy"), "dev")
    assert len(corpus) == 7 and probe(corpus.utterances[0].path).width == 48
    check = CliRunner().invoke(app, ["check-data", str(tmp_path / "toy"), "--split", "dev", "--decode"])
    output = " ".join(check.output.split())  # Rich wraps long lines
    assert check.exit_code == 0 and "7 utterances, 7 with a media file" in output and "nothing skipped" in output
