"""`mmva batch`: a collection analysed resumably, in-process and on a real local Ray cluster over S3.

The Ray tests start `ray start --head --block` on 127.0.0.1 with 2 CPUs (and stop it), talk to the
moto S3 server of tests/s3.py, and analyse generated talking-head clips (espeak-ng speech over a
real face photo) plus a corrupt one. They are skipped when Ray is not installed (`mmva[ray]`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmva.analyze.batch import (SUMMARY_COLUMNS, BatchOptions, _resume, analyze_collection, list_sources,
                                plan_tasks, summary_csv, write_record)
from mmva.io import storage
from tests.media import random_bytes_file, talking_head
from tests.s3 import aws_environment, free_port

LINES = ["I am so happy to see you again", "this is terrible, I hate it", "I am scared of the dark",
         "what a wonderful surprise", "leave me alone", "that is so sad, I miss her"]


def _touch(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


# -------------------------------------------------------------------------------------------------
# listing, planning, resuming (no models)


def test_sources_folder_glob_and_manifests(tmp_path: Path) -> None:
    _touch(tmp_path / "in/a.mp4", 10)
    _touch(tmp_path / "in/sub/a.mp4", 30)
    _touch(tmp_path / "in/a.wav", 20)
    _touch(tmp_path / "in/.hidden/c.mp4", 5)
    _touch(tmp_path / "in/notes.mmva.json", 5)
    files, root = list_sources(str(tmp_path / "in"))
    assert root == str(tmp_path / "in")
    assert sorted((Path(f).relative_to(tmp_path).as_posix(), s) for f, s in files) == [
        ("in/a.mp4", 10), ("in/a.wav", 20), ("in/sub/a.mp4", 30)]
    files, _ = list_sources(str(tmp_path / "in/**/*.mp4"))
    assert sorted(Path(f).relative_to(tmp_path).as_posix() for f, _ in files) == ["in/a.mp4", "in/sub/a.mp4"]

    (tmp_path / "in/list.csv").write_text("path,text\na.mp4,hi\nsub/a.mp4,x\na.mp4,again\n../escape.mp4,no\n")
    files, root = list_sources(str(tmp_path / "in/list.csv"))
    assert root is None and [s for _, s in files] == [10, 30]  # duplicates once, escapes refused
    (tmp_path / "in/list.jsonl").write_text('{"path": "a.wav"}\n\n{"path": "sub/a.mp4"}\n')
    assert [s for _, s in list_sources(str(tmp_path / "in/list.jsonl"))[0]] == [20, 30]

    # Largest first; names as mmva analyze gives them (the sub-folder mirrored, extensions kept on a clash).
    tasks = plan_tasks(str(tmp_path / "in"), str(tmp_path / "out"))
    assert [(Path(t.source).name, t.size) for t in tasks] == [("a.mp4", 30), ("a.wav", 20), ("a.mp4", 10)]
    assert [Path(t.folder).relative_to(tmp_path).as_posix() + "/" + t.stem for t in tasks] == [
        "out/sub/a.mmva", "out/a.wav.mmva", "out/a.mp4.mmva"]
    assert tasks[0].record == str(tmp_path / "out/.mmva-batch/records/sub/a.mmva.json")


def test_sources_s3_prefix(s3_bucket: str) -> None:
    for key, data in (("in/x/talk.mp4", b"1" * 7), ("in/talk.mp4", b"2" * 3), ("in/readme.md", b"no")):
        storage.write_bytes_atomic(f"{s3_bucket}/{key}", data)
    files, root = list_sources(f"{s3_bucket}/in/")
    assert files == [(f"{s3_bucket}/in/talk.mp4", 3), (f"{s3_bucket}/in/x/talk.mp4", 7)]
    tasks = plan_tasks(f"{s3_bucket}/in", f"{s3_bucket}/out/")
    assert [(t.folder, t.stem) for t in tasks] == [(f"{s3_bucket}/out/x", "talk.mmva"), (f"{s3_bucket}/out", "talk.mmva")]
    assert list_sources(f"{s3_bucket}/in/*.mp4")[0] == [(f"{s3_bucket}/in/talk.mp4", 3)]


def test_resume_rules(tmp_path: Path) -> None:
    """What a rerun does with each kind of record: skip, redo, retry (bounded), or report again."""
    for name in "abcdef":
        _touch(tmp_path / f"in/{name}.mp4", 10)
    out = str(tmp_path / "out")
    opts = BatchOptions(formats=("json",), retries=2)
    tasks = {Path(t.source).stem: t for t in plan_tasks(str(tmp_path / "in"), out)}
    ok = {"status": "ok", "size": 10, "attempts": 1}
    for name, rec in {"a": ok, "b": ok, "c": {"status": "failed", "transient": False, "attempts": 1, "size": 10},
                      "d": {"status": "failed", "transient": True, "attempts": 1, "size": 10},
                      "e": {"status": "failed", "transient": True, "attempts": 3, "size": 10},
                      "f": {**ok, "size": 11}}.items():
        write_record(tasks[name], {"source": tasks[name].source, **rec})
        storage.write_text_atomic(tasks[name].outputs(["json"])[0], "{}")
    os.unlink(tasks["b"].outputs(["json"])[0])  # an output deleted since: redone
    litter = tmp_path / "out/.a.mmva.json.k2j4.tmp"  # left by a write that a kill cut short
    litter.write_text("{")
    todo, done = _resume(list(tasks.values()), out, opts)
    assert not litter.exists()
    assert sorted(Path(t.source).stem for t in todo) == ["b", "d", "f"]
    assert {Path(t.source).stem: t.attempt for t in todo}["d"] == 2
    assert sorted(Path(r["source"]).stem for r in done) == ["a", "c", "e"]
    todo, _ = _resume(list(tasks.values()), out, BatchOptions(retry_failed=True))
    assert sorted(Path(t.source).stem for t in todo) == ["b", "c", "d", "e", "f"]
    todo, _ = _resume(list(tasks.values()), out, BatchOptions(formats=("json", "srt")))
    assert len(todo) == 6 - 2  # c and e failed for good; every ok file lacks its .srt now


def test_summary_csv_cells_are_safe() -> None:
    text = summary_csv([{"source": "=cmd.mp4", "status": "failed", "error": "-boom", "attempts": 1}])
    assert text.splitlines()[0] == ",".join(SUMMARY_COLUMNS)
    assert text.splitlines()[1].startswith("'=cmd.mp4,failed,'-boom,")


# -------------------------------------------------------------------------------------------------
# in-process, with a driver killed mid-run


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _batch_cmd(*args: str) -> list[str]:
    exe = shutil.which("mmva")
    return [*([exe] if exe else [sys.executable, "-c", "from mmva.cli import app; app()"]), "batch", *args]


def test_in_process_driver_killed_then_rerun(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i, line in enumerate(LINES[:4]):
        talking_head(src / f"clip{i}.mp4", line, size=64)
    random_bytes_file(src / "broken.mp4")
    out = tmp_path / "out"
    proc = subprocess.Popen(_batch_cmd(str(src), "--out", str(out), "-f", "json,srt", "--no-diarize", "-q"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    records = out / ".mmva-batch" / "records"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and len(list(records.glob("*.json"))) < 2:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0].decode()
    proc.send_signal(signal.SIGKILL)  # the driver (and so the only worker) dies mid-run
    proc.wait()
    finished = {json.loads(p.read_text())["source"] for p in records.glob("*.json")}
    assert 2 <= len(finished) < 5

    report = analyze_collection(str(src), str(out), BatchOptions(formats=("json", "srt"), diarize=False))
    assert report.skipped == len(finished) and report.analysed == 5 - len(finished)
    by_name = {Path(r["source"]).name: r for r in report.rows}
    assert [by_name[f"clip{i}.mp4"]["status"] for i in range(4)] == ["ok"] * 4
    assert by_name["broken.mp4"]["status"] == "failed" and "not a readable media file" in by_name["broken.mp4"]["error"]
    assert all(r["n_utterances"] >= 1 and r["duration"] > 0.5 for n, r in by_name.items() if n != "broken.mp4")
    assert len({r["worker"] for r in report.rows if r["source"] not in finished}) == 1  # one model load
    # Every output once, and nothing else (a temp file of a write the kill cut short is removed).
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == sorted([f"clip{i}.mmva.{e}" for i in range(4) for e in ("json", "srt")]
                           + [f".mmva-batch/records/{n}.mmva.json" for n in ("broken", "clip0", "clip1", "clip2", "clip3")]
                           + ["summary.csv"] + (["summary.parquet"] if _has("pyarrow") else []))
    timeline = json.loads((out / "clip0.mmva.json").read_text())
    assert timeline["source"] == str(src / "clip0.mp4") and timeline["utterances"][0]["emotions"]

    again = analyze_collection(str(src), str(out), BatchOptions(formats=("json", "srt"), diarize=False))
    assert again.counts() == {"ok": 4, "failed": 1, "analysed": 0, "skipped": 5}


# -------------------------------------------------------------------------------------------------
# a real Ray cluster over moto's S3


@pytest.fixture(scope="module")
def ray_cluster(moto_server: str, tmp_path_factory: pytest.TempPathFactory):
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs; its workers see the moto S3 server."""
    pytest.importorskip("ray")
    psutil = pytest.importorskip("psutil")
    port = free_port()
    log = open(tmp_path_factory.mktemp("ray") / "ray.log", "wb")
    # A throwaway cluster on loopback: no token authentication (Ray turns it on for a new cluster once a
    # token file exists in ~/.ray, which an earlier `ray.init()` on this machine may have made).
    env = {**os.environ, **aws_environment(moto_server), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    ray_exe = shutil.which("ray", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    head = subprocess.Popen([ray_exe, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
                             "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([ray_exe, "status", "--address", address], capture_output=True, env=env).returncode:
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed: {Path(log.name).read_text()[-3000:]}")
            time.sleep(1)
        yield address, head, env
    finally:
        children = psutil.Process(head.pid).children(recursive=True) if head.poll() is None else []
        head.terminate()  # `ray start --block` stops the processes it started when it is stopped
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        for child in children:  # anything left behind, by id
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        log.close()


def _cmdline(proc) -> str:
    import psutil

    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""


def _keys(bucket: str, prefix: str) -> list[str]:
    fs, path = storage.filesystem(f"{bucket}/{prefix}")
    return sorted(p.split("/", 1)[1] for p in fs.find(path))


def test_ray_cluster_over_s3_worker_killed(ray_cluster, s3_bucket: str, tmp_path: Path) -> None:
    """12 clips in a bucket (one corrupt) on 2 Ray workers; one worker is killed with SIGKILL while it
    analyses a file: the run finishes every file, the corrupt one reported, and a rerun adds nothing."""
    import psutil

    address, head, env = ray_cluster
    for i in range(11):
        path = talking_head(tmp_path / f"clip{i:02d}.mp4", LINES[i % len(LINES)], size=64, speed=140 + 10 * i)
        storage.upload_file_atomic(path, f"{s3_bucket}/videos/{'more/' if i >= 8 else ''}{path.name}")
    storage.upload_file_atomic(random_bytes_file(tmp_path / "broken.mp4", size=50_000), f"{s3_bucket}/videos/broken.mp4")
    cmd = _batch_cmd(f"{s3_bucket}/videos/", "--out", f"{s3_bucket}/out", "-f", "json,csv", "--ray", address,
                     "--no-diarize", "--retries", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and proc.poll() is None and time.monotonic() < deadline:
        if len(_keys(s3_bucket, "out/.mmva-batch/records/")) >= 2:  # models loaded, files flowing
            busy = [p for p in psutil.Process(head.pid).children(recursive=True)
                    if "ray::BatchWorker.run" in _cmdline(p)]
            if busy:
                killed = busy[0].pid
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.3)
    output = proc.communicate(timeout=300)[0].decode()
    assert killed is not None, output
    assert proc.returncode == 1, output  # the corrupt clip failed; everything else done
    assert "11 ok, 1 failed of 12 file(s); 12 analysed now" in output, output

    import pyarrow.parquet as pq

    rows = {Path(r["source"]).name: r for r in pq.read_table(storage.local_copy(f"{s3_bucket}/out/summary.parquet")[0])
            .to_pylist()}
    assert len(rows) == 12 and rows["broken.mp4"]["status"] == "failed"
    assert "not a readable media file" in rows["broken.mp4"]["error"] and rows["broken.mp4"]["attempts"] == 1
    good = [r for n, r in rows.items() if n != "broken.mp4"]
    assert all(r["status"] == "ok" and r["n_utterances"] >= 1 and r["dominant_emotion"] for r in good)
    assert max(r["attempts"] for r in good) == 2, "the file held by the killed worker was retried once"
    # Models loaded once per worker, not per file: 11 files done by the 2 workers and the one that
    # replaced the killed worker.
    assert 2 <= len({r["worker"] for r in good}) <= 3
    csv_text = storage.read_text(f"{s3_bucket}/out/summary.csv")
    assert csv_text.count("\r\n") == 13 and ",ok," in csv_text

    expected = sorted([f"out/{'more/' if i >= 8 else ''}clip{i:02d}.mmva.{e}" for i in range(11) for e in ("json", "csv")]
                      + [f"out/.mmva-batch/records/{'more/' if i >= 8 else ''}clip{i:02d}.mmva.json" for i in range(11)]
                      + ["out/.mmva-batch/records/broken.mmva.json", "out/summary.csv", "out/summary.parquet"])
    assert _keys(s3_bucket, "out/") == expected  # every output once, nothing else
    timeline = json.loads(storage.read_text(f"{s3_bucket}/out/more/clip09.mmva.json"))
    assert timeline["source"] == f"{s3_bucket}/videos/more/clip09.mp4" and timeline["utterances"]

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 1 and "0 analysed now, 12 done before" in rerun.stderr, rerun.stderr
    assert "broken.mp4" in rerun.stderr  # still reported
    assert _keys(s3_bucket, "out/") == expected
