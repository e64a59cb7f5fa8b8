"""Corpora and datasets: the real MELD transcripts, messy CSVs, manifests, the utterance dataset."""

from __future__ import annotations

import csv
import functools
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmva.config import load_config
from mmva.data import (
    Corpus, CorpusError, SkipReport, UtteranceDataset, collate_batch, fix_text, load_corpus, parse_timestamp,
    read_manifest, read_meld_csv,
)
from mmva.model.multimodal import build_encoders
from mmva.types import Utterance
from tests.media import moving_frames, random_bytes_file, tone, write_video

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
          "Episode", "StartTime", "EndTime"]


def write_meld_csv(path: Path, rows: list[list], header: list[str] = HEADER, encoding: str = "utf-8") -> Path:
    with open(path, "w", newline="", encoding=encoding) as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def row(text: str, emotion: str = "neutral", dia: int = 0, utt: int = 0, sentiment: str = "neutral") -> list:
    return [1, text, "Ross", emotion, sentiment, dia, utt, 1, 1, "00:00:01,000", "00:00:02,500"]


# -- the real MELD transcripts --------------------------------------------------------------------

@pytest.mark.parametrize("split,size,dialogues,counts", [
    ("train", 9989, 1038, {"neutral": 4710, "joy": 1743, "surprise": 1205, "anger": 1109, "sadness": 683,
                           "disgust": 271, "fear": 268}),
    ("dev", 1109, 114, {"neutral": 470, "joy": 163, "anger": 153, "surprise": 150, "sadness": 111, "fear": 40,
                        "disgust": 22}),
])
def test_real_meld_csv(meld_dir, split, size, dialogues, counts):
    utts, problems = read_meld_csv(str(meld_dir / f"{split}_sent_emo.csv"), split)
    assert problems == []
    assert len(utts) == size and len({u.dialogue_id for u in utts}) == dialogues
    assert Counter(u.emotion for u in utts) == counts
    assert len({u.uid for u in utts}) == size
    first = utts[0]
    assert first.uid == f"{split}/dia0_utt0" and first.start_time is None  # the clip is already cut
    assert first.extra["episode_start"] < first.extra["episode_end"]
    assert not any("â€" in u.text or "\ufffd" in u.text for u in utts)


def test_real_meld_train_details(meld_dir):
    corpus = load_corpus(str(meld_dir), "train")
    utts = corpus.utterances
    assert Counter(u.sentiment for u in utts) == {"neutral": 4710, "negative": 2945, "positive": 2334}
    assert sum(u.text.count("’") for u in utts) == 3547  # curly quotes kept as data
    first = utts[0]
    assert first.text == "also I was the point person on my company’s transition from the KL-5 to GR-6 system."
    assert first.extra["episode_start"] == pytest.approx(16 * 60 + 16.059)
    third = next(u for u in utts if u.uid == "train/dia0_utt2")
    assert third.extra["context"] == [utts[0].text, utts[1].text]
    # no clips here: every utterance kept, text only, and the reason is reported once
    assert all(u.path is None for u in utts)
    assert len(corpus.problems) == 1 and "no clip folder" in corpus.problems[0]


# -- messy CSVs ------------------------------------------------------------------------------------

def test_mojibake_quoted_commas_and_times(tmp_path):
    path = write_meld_csv(tmp_path / "dev_sent_emo.csv", [
        row("Oh, I donâ€™t know…  but â€œfineâ€\x9d", "joy", 0, 0, "positive"),
        row('He said "wait, what?", then left', "surprise", 0, 1, "positive"),
        row("line one\nline two", "neutral", 0, 2),
    ])
    utts, problems = read_meld_csv(str(path), "dev")
    assert problems == []
    assert utts[0].text == "Oh, I don’t know…  but “fine”"
    assert utts[1].text == 'He said "wait, what?", then left'
    assert utts[2].text == "line one\nline two"
    assert utts[0].extra["episode_start"] == 1.0 and utts[0].extra["episode_end"] == 2.5


def test_windows_1252_bytes_are_read_and_reported(tmp_path):
    path = tmp_path / "dev_sent_emo.csv"
    write_meld_csv(path, [row("I don’t know", "neutral", 0, 0), row("fine", "joy", 0, 1, "positive")],
                   encoding="cp1252")
    utts, problems = read_meld_csv(str(path), "dev")
    assert [u.text for u in utts] == ["I don’t know", "fine"]
    assert len(problems) == 1 and "not valid UTF-8" in problems[0] and "line 2" in problems[0]
    assert problems[0].startswith(str(path))


def test_missing_columns_are_a_clear_error(tmp_path):
    path = write_meld_csv(tmp_path / "dev_sent_emo.csv", [["hi", "joy"]], header=["Utterance", "Emotion"])
    with pytest.raises(CorpusError) as err:
        read_meld_csv(str(path), "dev")
    assert err.value.path == str(path)
    assert "Dialogue_ID" in str(err.value) and "Utterance_ID" in str(err.value)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match="empty file"):
        read_meld_csv(str(empty), "dev")


def test_bad_rows_are_skipped_and_reported_by_line(tmp_path):
    path = write_meld_csv(tmp_path / "dev_sent_emo.csv", [
        row("good", "joy", 0, 0, "positive"),
        row("what label is this", "happyish", 0, 1),
        row("", "neutral", 0, 2),
        row("again", "anger", 0, 0, "negative"),
        row("bad id", "neutral", "x", 3),
        row("no labels", "", 0, 4, ""),
    ])
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("9,too,many,fields,neutral,neutral,0,9,1,1,00:00:01,000,00:00:02,000\n")
    utts, problems = read_meld_csv(str(path), "dev")
    assert [u.uid for u in utts] == ["dev/dia0_utt0", "dev/dia0_utt2", "dev/dia0_utt4"]
    assert utts[1].text == ""  # empty utterance kept: its clip may still speak
    assert utts[2].emotion is None and utts[2].sentiment is None  # unlabelled, not a guess
    text = "\n".join(problems)
    assert "line 3 (dia0_utt1): unknown emotion label 'happyish'" in text
    assert "line 4 (dia0_utt2): empty utterance text" in text
    assert "line 5: duplicate id dia0_utt0 (first on line 2)" in text
    assert "line 6: Dialogue_ID/Utterance_ID not integers" in text
    assert "line 8: " in text and "more field(s) than the header" in text
    assert all(p.startswith(str(path)) for p in problems)


_TEXT = st.text(alphabet=st.sampled_from(list("abcXYZ019 ,.;:!?'\"’“”…-é\n")), max_size=40)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_TEXT, st.sampled_from(["anger", "joy", "Neutral", "SADNESS"])), min_size=1, max_size=8))
def test_csv_reader_round_trips_any_text(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("prop") / "train_sent_emo.csv"
    write_meld_csv(path, [row(text, emo, 0, i, "neutral") for i, (text, emo) in enumerate(rows)])
    utts, problems = read_meld_csv(str(path), "train")
    assert [u.text for u in utts] == [text.strip() for text, _ in rows]
    assert [u.emotion for u in utts] == [emo.lower() for _, emo in rows]
    assert all("empty utterance" in p for p in problems)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999), st.sampled_from([",", "."]))
def test_timestamp_parser_round_trips(h, m, s, ms, sep):
    assert parse_timestamp(f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}") == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=20))
def test_timestamp_parser_accepts_or_raises_value_error(text):
    try:
        value = parse_timestamp(text)
    except ValueError as exc:
        assert repr(text) in str(exc) or text.strip() in str(exc)
    else:
        assert value >= 0 and value != float("inf")


def test_fix_text_examples():
    assert fix_text("It\u00e2\u20ac\u2122s") == "It’s"
    assert fix_text("  caf\u00c3\u00a9 ") == "café"
    assert fix_text("“quoted” – ok…") == "“quoted” – ok…"  # correct text is left alone
    assert fix_text("”é") == "”é"  # plain ftfy reads this as MacRoman mojibake of "ӎ" (found by hypothesis)


# -- manifests ---------------------------------------------------------------------------------------

def test_csv_manifest_paths_times_labels(tmp_path):
    clips = tmp_path / "data" / "clips"
    clips.mkdir(parents=True)
    write_video(clips / "a.mp4", moving_frames(4), audio=tone(0.5))
    outside = write_video(tmp_path / "elsewhere.mp4", moving_frames(4))
    manifest = tmp_path / "data" / "train.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "text", "start", "end", "emotion", "dialogue_id", "speaker"])
        w.writerow(["clips/a.mp4", "hello, there", "0.1", "00:00:00,400", "happy", "d1", "Ann"])
        w.writerow(["clips/a.mp4", "second", "0.2", "0.4", "sad", "d1", "Bob"])
        w.writerow(["clips/missing.mp4", "gone", "", "", "anger", "d2", ""])
        w.writerow(["../elsewhere.mp4", "escape", "", "", "neutral", "", ""])
        w.writerow([str(outside), "absolute is fine", "", "", "neutral", "", ""])
        w.writerow(["", "text only", "", "", "fear", "", ""])
        w.writerow(["clips/a.mp4", "backwards", "2", "1", "joy", "", ""])
        w.writerow(["", "", "", "", "joy", "", ""])
    corpus = load_corpus(str(tmp_path / "data"), "train")
    utts = {u.text: u for u in corpus.utterances}
    a = utts["hello, there"]
    assert a.path == str(clips / "a.mp4") and (a.start_time, a.end_time) == (0.1, 0.4)
    assert a.emotion == "joy" and a.sentiment == "positive" and a.speaker == "Ann"
    assert utts["second"].extra["context"] == ["hello, there"]
    assert utts["gone"].path is None and utts["escape"].path is None
    assert utts["absolute is fine"].path == str(outside)
    assert utts["text only"].path is None and utts["text only"].emotion == "fear"
    assert "backwards" not in utts and len(corpus) == 6
    assert len({u.uid for u in corpus.utterances}) == 6  # derived ids are unique (same clip, two ranges)
    text = "\n".join(corpus.problems)
    assert f"{clips / 'missing.mp4'}: file not found" in text
    assert "path '../elsewhere.mp4' leaves the manifest's folder" in text
    assert "line 8: end 1.0 is not after start 2.0" in text
    assert "line 9: neither text nor path" in text


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(_TEXT.filter(str.strip), st.floats(0, 1e4), st.floats(0.01, 100),
                          st.sampled_from(["joy", "Sad", "angry", ""])), min_size=1, max_size=6),
       st.booleans())
def test_manifest_reader_round_trips(tmp_path_factory, rows, as_jsonl):
    folder = tmp_path_factory.mktemp("manifest")
    records = [{"text": t, "start": round(s, 3), "end": round(s + d, 3), "emotion": e} for t, s, d, e in rows]
    if as_jsonl:
        path = folder / "train.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in records), encoding="utf-8")
    else:
        path = folder / "train.csv"
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["text", "start", "end", "emotion"])
            writer.writeheader()
            writer.writerows(records)
    utts, problems = read_manifest(str(path), "train")
    assert problems == [] and len({u.uid for u in utts}) == len(rows)
    assert [u.text for u in utts] == [r["text"].strip() for r in records]
    assert [(u.start_time, u.end_time) for u in utts] == [(r["start"], r["end"]) for r in records]
    aliases = {"joy": "joy", "Sad": "sadness", "angry": "anger", "": None}
    assert [u.emotion for u in utts] == [aliases[r["emotion"]] for r in records]


def test_jsonl_manifest_and_duplicate_ids(tmp_path):
    write_video(tmp_path / "x.mp4", moving_frames(4))
    lines = [
        {"id": "u1", "path": "x.mp4", "text": "one", "emotion": "joy", "sentiment": "positive"},
        {"id": "u1", "path": "x.mp4", "text": "dup"},
        "not json at all",
        {"id": "u2", "text": "two", "emotion": "nope"},
        {"id": "u3", "text": "three", "utterance_id": 2, "dialogue_id": 7},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines))
    utts, problems = read_manifest(str(path), "dev")
    assert [u.uid for u in utts] == ["dev/u1", "dev/u3"]
    assert utts[0].path == str(tmp_path / "x.mp4") and utts[1].dialogue_id == "7"
    text = "\n".join(problems)
    assert "line 2: duplicate id dev/u1" in text and "line 3: not valid JSON" in text
    assert "line 4: unknown emotion label 'nope'" in text
    assert load_corpus(str(path), "dev").utterances[0].uid == "dev/u1"  # a manifest path works directly


def test_manifest_without_path_or_text_column(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("file,label\na.mp4,joy\n")
    with pytest.raises(CorpusError, match="needs 'path' or 'text'"):
        load_corpus(str(tmp_path), "train")


def test_clip_folders_as_in_the_raw_release(tmp_path):
    write_meld_csv(tmp_path / "test_sent_emo.csv", [row("hi", "joy", 3, 1, "positive")])
    nested = tmp_path / "test" / "output_repeated_splits_test"
    nested.mkdir(parents=True)
    write_video(nested / "dia3_utt1.mp4", moving_frames(4))
    (nested / "._dia3_utt1.mp4").write_bytes(b"macOS resource fork")  # found in the raw tarballs
    corpus = load_corpus(str(tmp_path), "test")
    assert corpus.problems == [] and corpus.utterances[0].path == str(nested / "dia3_utt1.mp4")


def test_load_corpus_errors_name_what_was_looked_for(tmp_path):
    with pytest.raises(CorpusError, match="corpus folder not found"):
        load_corpus(str(tmp_path / "nope"), "train")
    with pytest.raises(CorpusError, match="train_sent_emo.csv"):
        load_corpus(str(tmp_path), "train")


# -- the dataset --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    return cfg, build_encoders(cfg.model, cfg.data)


@pytest.fixture()
def broken_corpus(generated_corpus, tmp_path):
    """The generated dev split with one clip deleted, one replaced by garbage and one row without text."""
    root = tmp_path / "corpus"
    shutil.copytree(generated_corpus, root, ignore=shutil.ignore_patterns("train*"))
    clips = root / "dev_splits_complete"
    (clips / "dia0_utt0.mp4").unlink()
    random_bytes_file(clips / "dia0_utt1.mp4")
    rows = list(csv.reader(open(root / "dev_sent_emo.csv", encoding="utf-8")))
    for r in rows[1:]:
        if r[5:7] == ["0", "0"]:
            r[1] = ""  # no clip and no words: nothing left to learn from
    with open(root / "dev_sent_emo.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return root


def test_dataset_items_and_batches(generated_corpus, tiny):
    cfg, encoders = tiny
    corpus = load_corpus(str(generated_corpus), "train")
    assert corpus.problems == [] and len(corpus) == 42
    ds = UtteranceDataset(corpus.utterances, encoders, cfg.data)
    threads = torch.get_num_threads()
    item = ds[0]
    assert torch.get_num_threads() == threads  # single-threaded per item, restored afterwards
    assert set(item) == {"uid", "inputs", "features", "emotion", "sentiment", "problems"}
    assert item["inputs"]["video"].shape == (cfg.data.num_frames, 3, cfg.data.frame_size, cfg.data.frame_size)
    assert item["inputs"]["audio"].shape == (1, cfg.data.n_mels, cfg.data.audio_frames)
    assert item["emotion"] == ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"].index(
        corpus.utterances[0].emotion)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2,
                                         collate_fn=functools.partial(collate_batch, encoders=encoders))
    batches = list(loader)  # workers: the dataset pickles
    assert sum(len(b["uid"]) for b in batches) == 42
    b = batches[0]
    assert b["inputs"]["video"].shape[0] == 8 and b["masks"]["audio"].tolist() == [1.0] * 8
    assert b["emotion"].dtype == torch.long and b["skipped"] == [] and b["features"] == {}


def test_missing_and_corrupt_clips_are_masked_and_reported(broken_corpus, tiny):
    cfg, encoders = tiny
    corpus = load_corpus(str(broken_corpus), "dev")
    assert any("dia0_utt0.mp4: clip not found" in p for p in corpus.problems)
    ds = UtteranceDataset(corpus.utterances, encoders, cfg.data)
    index = {u.uid: i for i, u in enumerate(corpus.utterances)}
    garbage = ds[index["dev/dia0_utt1"]]
    assert garbage["inputs"]["video"] is None and garbage["inputs"]["audio"] is None
    assert garbage["inputs"]["text"] is not None  # the words remain
    assert "not a readable media file" in garbage["problems"][0]
    items = [ds[index[u]] for u in ("dev/dia0_utt0", "dev/dia0_utt1", "dev/dia1_utt0")]
    batch = collate_batch(items, encoders)
    assert batch["uid"] == ["dev/dia0_utt1", "dev/dia1_utt0"]  # nothing usable in dia0_utt0: dropped
    assert batch["skipped"][0][0] == "dev/dia0_utt0" and "no usable modality" in batch["skipped"][0][1]
    assert batch["masks"]["video"].tolist() == [0.0, 1.0] and batch["masks"]["text"].tolist() == [1.0, 1.0]
    assert batch["inputs"]["video"].shape[0] == 2 and float(batch["inputs"]["video"][0].abs().sum()) == 0.0
    report = SkipReport()
    report.add_problems(corpus.problems)
    report.add_batch(batch)
    summary = report.summary()
    assert "skipped or degraded" in summary and "dev/dia0_utt0" in summary and "dev/dia0_utt1" in summary


def test_dataset_decodes_once_and_not_at_all_when_cached(generated_corpus, tiny, tmp_path, monkeypatch):
    from mmva.data import dataset as dataset_module
    from mmva.encoders.cache import FeatureCache, extract_features

    cfg, encoders = tiny
    utts = load_corpus(str(generated_corpus), "dev").utterances[:6]
    calls: list[str] = []
    real = dataset_module.decode_clip

    def counting(path, **kw):  # a spy around the real decoder
        calls.append(path)
        return real(path, **kw)

    monkeypatch.setattr(dataset_module, "decode_clip", counting)
    ds = UtteranceDataset(utts, encoders, cfg.data)
    for i in range(len(ds)):
        ds[i]
    assert len(calls) == 6  # one decode per item, shared by the video and audio encoders
    frozen = {m: e.freeze() for m, e in build_encoders(cfg.model, cfg.data).items()}
    cache = FeatureCache(str(tmp_path / "cache"))
    extract_features(utts, frozen, cache, cfg.data, workers=1, progress=False)
    calls.clear()
    cached = UtteranceDataset(utts, frozen, cfg.data, cache=cache, cached=frozenset(frozen))
    item = cached[0]
    assert calls == []
    assert all(v is None for v in item["inputs"].values())
    assert item["features"]["video"].shape == (frozen["video"].output_dim,)
    batch = collate_batch([cached[i] for i in range(3)], frozen)
    assert batch["features"]["audio"].shape == (3, frozen["audio"].output_dim)
    assert batch["feature_mask"]["audio"].tolist() == [1.0] * 3 and batch["inputs"]["audio"] is None


def test_corpus_label_counts_and_report_summary():
    corpus = Corpus([Utterance(emotion="joy", sentiment="positive"), Utterance(emotion="joy"), Utterance()])
    assert corpus.label_counts() == [0, 0, 0, 2, 0, 0, 0]
    report = SkipReport()
    for i in range(5):
        report.add(f"train/dia{i}_utt0", f"line {i + 2} (dia{i}_utt0): unknown emotion label 'x{i}'; skipped")
    report.add("a.mp4", "no audio stream")
    lines = report.summary().splitlines()
    assert lines[0] == "6 item(s) skipped or degraded:"
    assert lines[1] == "  unknown emotion label #: 5 (train/dia0_utt0, train/dia1_utt0, train/dia2_utt0, ...)"
    assert "no audio stream: 1 (a.mp4)" in lines[2]
    assert report.to_csv().splitlines()[0] == "item,reason"


def test_corpus_on_s3(generated_corpus, s3_bucket, aws_env):
    from mmva.io import storage

    root = f"{s3_bucket}/meld"
    storage.upload_file_atomic(generated_corpus / "dev_sent_emo.csv", f"{root}/dev_sent_emo.csv")
    for clip in sorted((generated_corpus / "dev_splits_complete").iterdir())[:3]:
        storage.upload_file_atomic(clip, f"{root}/dev_splits_complete/{clip.name}")
    corpus = load_corpus(root, "dev")
    with_clip = [u for u in corpus.utterances if u.path]
    assert len(corpus) == 42 and len(with_clip) == 3 and with_clip[0].path.startswith("s3://")
    assert sum("clip not found" in p for p in corpus.problems) == 39
