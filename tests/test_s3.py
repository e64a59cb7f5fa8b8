"""s3:// everywhere, against a real moto server over HTTP: corpus, feature cache, checkpoints,
TensorBoard logs and evaluation all on S3."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from mmva.io import storage


def test_storage_round_trip_on_s3(s3_bucket, tmp_path):
    base = f"{s3_bucket}/a"
    storage.write_text_atomic(f"{base}/x/one.txt", "one")
    local = tmp_path / "two.bin"
    local.write_bytes(b"\x00" * 2048)
    storage.upload_file_atomic(local, f"{base}/x/two.bin")
    assert storage.exists(f"{base}/x/one.txt") and storage.read_text(f"{base}/x/one.txt") == "one"
    assert storage.listdir(f"{base}/x") == ["one.txt", "two.bin"]
    assert list(storage.walk_files(base)) == [f"{base}/x/one.txt", f"{base}/x/two.bin"]
    copy, is_temp = storage.local_copy(f"{base}/x/two.bin")
    assert is_temp and Path(copy).read_bytes() == local.read_bytes()
    # the endpoint came from AWS_ENDPOINT_URL: the objects are in moto, seen by plain boto3 too
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket[5:])["Contents"]]
    assert keys == ["a/x/one.txt", "a/x/two.bin"]
    storage.remove(base, recursive=True)
    assert not storage.exists(f"{base}/x/one.txt")


def test_copy_tree_uploads_a_folder_and_syncs_changes(s3_bucket, tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "sub" / "b.txt").write_text("b")
    assert storage.copy_tree(tmp_path / "d", f"{s3_bucket}/d") == 2
    assert storage.read_text(f"{s3_bucket}/d/sub/b.txt") == "b"
    (tmp_path / "d" / "a.txt").write_text("a2")
    assert storage.copy_tree(tmp_path / "d", f"{s3_bucket}/d", only_changed=True) == 1  # only a.txt
    assert storage.read_text(f"{s3_bucket}/d/a.txt") == "a2"
    back = tmp_path / "back"
    assert storage.copy_tree(f"{s3_bucket}/d", back) == 2
    assert (back / "sub" / "b.txt").read_text() == "b"


def test_readers_never_see_a_half_written_checkpoint(s3_bucket):
    """A reader polling while a checkpoint is rewritten sees the old or the new file, whole."""
    import threading

    uri = f"{s3_bucket}/ckpt/last.safetensors"
    versions = [bytes([i]) * (256 << 10) for i in range(2)]  # 256 KiB each
    storage.write_bytes_atomic(uri, versions[0])
    done, seen, bad, reads = threading.Event(), set(), [], [0]

    def read() -> None:
        while not done.is_set():
            try:
                data = storage.read_bytes(uri)  # never "not found", never a prefix
            except FileNotFoundError:
                data = b"<missing>"
            reads[0] += 1
            if data in versions:
                seen.add(data[0])
            else:
                bad.append(data[:9] if data == b"<missing>" else len(data))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        writes = 0
        while writes < 6 or (reads[0] < 4 and writes < 60):  # overlap: several reads during writes
            writes += 1
            storage.write_bytes_atomic(uri, versions[writes % 2])
    finally:
        done.set()
        reader.join()
    assert not bad, f"reads of a missing or partial object: {bad[:5]}"
    assert reads[0] >= 4 and seen  # the reader did read while writes went on


@pytest.fixture(scope="module")
def local_corpus(tmp_path_factory) -> Path:
    from mmva.data import make_corpus

    return make_corpus(tmp_path_factory.mktemp("s3corpus"), n_per_class={"train": 2, "dev": 1}, seed=1,
                       size=32, fps=4.0)


def test_train_and_evaluate_with_every_path_on_s3(s3_bucket, local_corpus):
    from typer.testing import CliRunner

    from mmva.cli import app
    from mmva.config import load_config
    from mmva.model.checkpoint import load_model
    from mmva.train.evaluate import evaluate
    from mmva.train.fit import fit

    corpus = f"{s3_bucket}/corpus"
    result = CliRunner().invoke(app, ["copy", str(local_corpus), corpus])  # the corpus goes up
    assert result.exit_code == 0 and "file(s) copied" in result.output, result.output
    run = f"{s3_bucket}/runs/tiny"
    cfg = load_config("tiny", ["train.epochs=2", "data.num_frames=4", "data.frame_size=32",
                               "model.freeze_text=true", f"train.cache_dir={s3_bucket}/features"])
    result = fit(cfg, corpus, run, progress=False)

    assert result.best_checkpoint.startswith(f"{run}/checkpoints/")
    names = storage.listdir(f"{run}/checkpoints")
    assert "last.safetensors" in names and "last.ckpt" in names
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")]  # no half-written leftovers
    assert storage.exists(f"{run}/config.yaml") and storage.exists(f"{run}/metrics.json")
    events = [p for p in storage.walk_files(f"{run}/tensorboard") if "tfevents" in p]
    assert events, "TensorBoard events were not written to S3"
    assert any(storage.listdir(f"{s3_bucket}/features"))  # frozen text features cached on S3

    model = load_model(result.best_checkpoint)  # straight from s3://
    assert model.config.train.epochs == 2
    metrics = evaluate(result.best_checkpoint, corpus, "dev", out=f"{run}/eval-dev.json")
    saved = json.loads(storage.read_text(f"{run}/eval-dev.json"))
    assert saved["emotion"]["accuracy"] == metrics["emotion"]["accuracy"]
    assert metrics["emotion"]["support"] == 7
    # the evaluation of the best checkpoint reproduces the dev metrics recorded while training
    assert metrics["emotion"]["accuracy"] == pytest.approx(result.metrics["emotion"]["accuracy"])
    assert metrics["sentiment"]["accuracy"] == pytest.approx(result.metrics["sentiment"]["accuracy"])
