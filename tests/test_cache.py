"""Feature cache: content keys, atomic entries, hits that skip work, a run killed with SIGKILL that
resumes without recomputing or corrupting anything, S3 (moto server), and `mmva extract`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from mmva.config import DataConfig
from mmva.encoders import create_encoder
from mmva.encoders.cache import MISSING, FeatureCache, extract_features, weights_digest
from mmva.types import Utterance
from tests.media import face_frames, moving_frames, tone, write_video

DATA = DataConfig(num_frames=4, frame_size=32)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def face_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 s clip of a real face with a tone: utterances are 1 s windows of it."""
    return write_video(tmp_path_factory.mktemp("media") / "face.mp4", face_frames(30, 96), fps=10,
                       audio=tone(3.0))


@pytest.fixture(scope="module")
def face_enc():
    return create_encoder("face-expression", num_frames=4).freeze()


def count_rows(encoder: torch.nn.Module) -> list[int]:
    """Rows seen by each forward call of ``encoder`` (a real forward hook)."""
    calls: list[int] = []

    def hook(module, args, out):
        calls.append(out.shape[0])

    encoder.register_forward_hook(hook)
    return calls


def test_put_get_round_trip_and_absent(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    key = "enc/" + "a" * 64
    assert cache.get(key) is MISSING and not cache.contains(key)
    cache.put(key, torch.arange(5, dtype=torch.float32))
    torch.testing.assert_close(cache.get(key), torch.arange(5, dtype=torch.float32))
    cache.put("enc/" + "b" * 64, None)  # "modality absent" is an answer, not a miss
    assert cache.get("enc/" + "b" * 64) is None and cache.contains("enc/" + "b" * 64)
    assert sorted(cache.keys()) == ["enc/" + "a" * 64, "enc/" + "b" * 64]
    assert [p.name for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith(".")] == []
    stale, fresh = Path(cache.path(key) + ".x1.tmp"), Path(cache.path(key) + ".x2.tmp")
    stale, fresh = stale.with_name("." + stale.name), fresh.with_name("." + fresh.name)
    stale.write_bytes(b"left by a killed writer"), fresh.write_bytes(b"being written right now")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert cache.remove_stale_temp() == 1 and not stale.exists() and fresh.exists()


def test_a_foreign_corrupt_entry_is_a_miss_and_gets_rewritten(tmp_path: Path, caplog) -> None:
    cache = FeatureCache(tmp_path)
    enc = create_encoder("tiny-text")
    utt = Utterance(text="hello there", uid="u1")
    key = cache.key(utt, enc, DATA)
    Path(cache.path(key)).parent.mkdir(parents=True)
    Path(cache.path(key)).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert cache.get(key) is MISSING
    assert "unreadable" in caplog.text and cache.path(key) in caplog.text
    report = extract_features([utt], {"text": enc}, cache, DATA, progress=False)
    assert report.computed == 1 and cache.get(key).shape == (32,)
    whole = Path(cache.path(key)).read_bytes()  # a torn write (power cut): detected, not misread
    Path(cache.path(key)).write_bytes(whole[: len(whole) - 7])
    assert cache.get(key) is MISSING


def test_keys_follow_content_and_preprocessing(tmp_path: Path, face_video: Path, face_enc) -> None:
    cache = FeatureCache(tmp_path)
    text = create_encoder("minilm", max_tokens=32)
    u = Utterance(text="Hi!", path=str(face_video), start_time=0.0, end_time=1.0, extra={"context": ["Yo."]})
    k_text, k_video = cache.key(u, text, DATA), cache.key(u, face_enc, DATA)
    assert k_text.startswith("minilm/") and k_video.startswith("face-expression/")
    assert cache.key(u, text, DATA) == k_text  # deterministic
    assert cache.key(Utterance(text="Hi?"), text, DATA) != k_text  # text content
    assert cache.key(Utterance(text="Hi!", extra={"context": ["Other."]}), text, DATA) == k_text  # context unused
    with_ctx = create_encoder("minilm", max_tokens=32, context_turns=1)
    assert cache.key(u, with_ctx, DATA) != cache.key(Utterance(text="Hi!", extra={"context": ["Other."]}),
                                                     with_ctx, DATA)  # context used -> part of the key
    assert cache.key(u, with_ctx, DATA) != k_text  # preprocessing
    copy = tmp_path / "copy.mp4"
    shutil.copy(face_video, copy)
    assert cache.key(Utterance(text="x", path=str(copy), start_time=0.0, end_time=1.0), face_enc, DATA) == k_video
    assert cache.key(Utterance(path=str(face_video), start_time=0.5, end_time=1.0), face_enc, DATA) != k_video
    assert cache.key(u, face_enc, DataConfig(num_frames=8)) != k_video  # decoding
    other = tmp_path / "other.mp4"
    write_video(other, face_frames(30, 96)[::-1], fps=10, audio=tone(3.0))
    assert cache.key(Utterance(path=str(other), start_time=0.0, end_time=1.0), face_enc, DATA) != k_video
    # two random initialisations are two different encoders, whatever their cache_key() says
    a, b = create_encoder("tiny-text"), create_encoder("tiny-text")
    assert a.cache_key() == b.cache_key() and weights_digest(a) != weights_digest(b)
    assert cache.key(u, a, DATA) != cache.key(u, b, DATA)


def test_a_cache_hit_does_not_recompute(tmp_path: Path, face_video: Path, face_enc) -> None:
    text = create_encoder("tiny-text").freeze()
    rows = {"text": count_rows(text), "video": count_rows(face_enc)}
    noface = write_video(tmp_path / "noface.mp4", moving_frames(10, 64, 64))
    utts = [Utterance(uid=f"u{i}", text=f"line {i}", path=str(face_video), start_time=i * 0.5,
                      end_time=i * 0.5 + 1.0) for i in range(3)]
    utts.append(Utterance(uid="noface", text="", path=str(noface)))
    utts.append(Utterance(uid="broken", text="still has words", path=str(tmp_path / "gone.mp4")))
    cache = FeatureCache(tmp_path / "cache")
    encs = {"text": text, "video": face_enc}
    first = extract_features(utts, encs, cache, DATA, workers=2, progress=False, batch_size=2)
    assert first.computed == 9 and first.reused == 0 and first.absent == 2  # noface: no words, no face
    assert [uid for uid, _ in first.failed] == ["broken"] and "gone.mp4" in first.failed[0][1]
    assert sum(rows["text"]) == 4 and sum(rows["video"]) == 3
    assert max(rows["video"]) == 2  # batched forward
    for m, enc in encs.items():
        assert cache.get(cache.key(utts[1], enc, DATA)).shape == (enc.output_dim,)
        assert cache.get(cache.key(utts[3], enc, DATA)) is None
    rows["text"].clear(), rows["video"].clear()
    second = extract_features(utts, encs, cache, DATA, workers=2, progress=False)
    assert second.computed == 0 and second.reused == 9
    assert rows == {"text": [], "video": []}  # not a single forward pass
    assert [uid for uid, _ in second.failed] == ["broken"]  # still reported, still not cached


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from mmva.config import DataConfig
    from mmva.encoders import create_encoder
    from mmva.encoders.cache import FeatureCache, extract_features
    from mmva.types import Utterance

    video, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    utts = [Utterance(uid=f"u{i}", path=video, start_time=i * 0.02, end_time=i * 0.02 + 1.0) for i in range(n)]
    enc = create_encoder("face-expression", num_frames=4).freeze()
    extract_features(utts, {"video": enc}, FeatureCache(root), DataConfig(num_frames=4, frame_size=32),
                     workers=1, batch_size=1, progress=False)
    print("finished")
""")


def test_killed_extract_resumes_without_recomputing_or_corruption(tmp_path: Path, face_video: Path,
                                                                   face_enc) -> None:
    n, root = 24, tmp_path / "cache"
    log_path = tmp_path / "extract.log"  # a file, not a pipe: an unread pipe can block the child
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(face_video), str(root), str(n)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while len(list(root.rglob("*.safetensors"))) < 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"extract ended before it could be killed: {log_path.read_text()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    cache = FeatureCache(root)
    done = list(cache.keys())
    assert 5 <= len(done) < n
    for key in done:  # every entry on disk is whole
        value = cache.get(key)
        assert isinstance(value, torch.Tensor) and value.shape == (135,) and torch.isfinite(value).all()
    rows = count_rows(face_enc)
    utts = [Utterance(uid=f"u{i}", path=str(face_video), start_time=i * 0.02, end_time=i * 0.02 + 1.0)
            for i in range(n)]
    report = extract_features(utts, {"video": face_enc}, cache, DataConfig(num_frames=4, frame_size=32),
                              workers=2, progress=False)
    assert report.reused == len(done) and report.computed == n - len(done) and not report.failed
    assert sum(rows) == n - len(done)  # nothing finished was computed again
    assert len(list(cache.keys())) == n
    for tmp in root.rglob(".*.tmp"):  # a write the kill interrupted: cleaned up once it is stale
        os.utime(tmp, (time.time() - 7200, time.time() - 7200))
    extract_features(utts, {"video": face_enc}, cache, DataConfig(num_frames=4, frame_size=32), progress=False)
    assert list(root.rglob("*.tmp")) == []


def test_cache_and_media_on_s3(s3_bucket: str, face_video: Path, face_enc) -> None:
    from mmva.io import storage

    video_uri = f"{s3_bucket}/clips/face.mp4"
    storage.upload_file_atomic(face_video, video_uri)
    cache = FeatureCache(f"{s3_bucket}/features")
    utts = [Utterance(uid="s3", text="from the bucket", path=video_uri, start_time=0.0, end_time=1.0)]
    text = create_encoder("tiny-text").freeze()
    first = extract_features(utts, {"text": text, "video": face_enc}, cache, DATA, progress=False)
    assert first.computed == 2 and not first.failed
    assert sorted(k.split("/")[0] for k in cache.keys()) == ["face-expression", "tiny-text"]
    feature = cache.get(cache.key(utts[0], face_enc, DATA))
    assert feature.shape == (135,)
    local_utt = Utterance(path=str(face_video), start_time=0.0, end_time=1.0)
    with torch.no_grad():  # the same content gives the same feature, wherever it is stored
        expected = face_enc(face_enc.collate([face_enc.prepare(_decode(local_utt))]))[0]
    torch.testing.assert_close(feature, expected, atol=1e-5, rtol=1e-4)
    again = extract_features(utts, {"text": text, "video": face_enc}, cache, DATA, progress=False)
    assert again.reused == 2 and again.computed == 0


def _decode(utt: Utterance):
    from mmva.encoders.cache import _decode as decode

    return decode(utt, DATA, {"video"})


def test_extract_cli_on_a_generated_corpus(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mmva.cli import app
    from mmva.data.synth import make_corpus

    corpus = make_corpus(tmp_path / "toy", n_per_class=1, splits=("train",))
    (corpus / "train_splits" / "dia0_utt0.mp4").write_bytes(b"not a video")
    args = ["extract", "--data", str(corpus), "--split", "train", "--encoders", "face-expression",
            "--cache", str(tmp_path / "cache"), "--workers", "2", "--no-progress", "--config", "tiny"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # Rich wraps lines at the terminal width
    assert "0 reused" in out and "1 failed" in out
    assert "skipped dia0_utt0" in out.replace("train/", "") and "not a readable media file" in out
    n_entries = len(list(FeatureCache(tmp_path / "cache").keys()))
    assert n_entries == 6  # 7 clips, one unreadable
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    out = " ".join(again.output.split())
    assert "0 entries computed" in out and "6 reused" in out


def test_extract_cli_names_a_bad_corpus_or_encoder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mmva.cli import app

    missing = CliRunner().invoke(app, ["extract", "--data", str(tmp_path / "nope"), "--cache", str(tmp_path / "c"),
                                       "--encoders", "face-expression", "--no-progress"])
    assert missing.exit_code == 2 and "nope: corpus folder not found" in " ".join(missing.output.split())
    typo = CliRunner().invoke(app, ["extract", "--data", str(tmp_path), "--cache", str(tmp_path / "c"),
                                    "--encoders", "face-expresion"])
    assert typo.exit_code == 2 and "unknown encoder 'face-expresion'" in " ".join(typo.output.split())
