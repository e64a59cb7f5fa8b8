"""Checkpoints: self-describing safetensors, atomic writes under a full disk, pickles refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmva.config import load_config
from mmva.model.checkpoint import (CheckpointError, load_model, load_training_state, read_metadata,
                                   save_checkpoint, save_training_state)
from mmva.model.multimodal import MultimodalSentimentAnalyzer

TEXT_ONLY = ["model.video=null", "model.audio=null"]


def _tiny(overrides=()):
    cfg = load_config("tiny", list(overrides))
    torch.manual_seed(0)
    return MultimodalSentimentAnalyzer(cfg).eval(), cfg


def test_roundtrip_rebuilds_the_model_from_the_file_alone(tmp_path):
    model, cfg = _tiny(["model.dropout=0.25"])
    path = save_checkpoint(model, cfg, tmp_path / "m.safetensors", extra={"epoch": 3})
    meta = read_metadata(path)
    assert meta["architecture"] == "MultimodalSentimentAnalyzer" and meta["version"]
    assert meta["labels"]["emotion"][3] == "joy"
    assert meta["encoders"]["video"] == {"name": "tiny-video", "output_dim": 32, "weights": "random init",
                                         "preprocess": {"num_frames": 8, "frame_size": 32, "range": "0-1"}}
    assert meta["extra"] == {"epoch": 3}
    loaded = load_model(path)
    assert loaded.config == cfg and loaded.config.model.dropout == 0.25  # the whole run config travels
    assert not loaded.training
    feats = {"text": torch.randn(3, 32), "video": torch.randn(3, 32), "audio": torch.randn(3, 128)}
    with torch.no_grad():
        a, b = model.fuse(feats), loaded.fuse(feats)
    torch.testing.assert_close(a["emotion"], b["emotion"])
    torch.testing.assert_close(a["sentiment"], b["sentiment"])
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # readable by the serving user, not 0600


def test_not_an_mmva_file_is_named_in_the_error(tmp_path):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.safetensors: not a safetensors file"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.safetensors")
    model, cfg = _tiny(TEXT_ONLY)
    good = Path(save_checkpoint(model, cfg, tmp_path / "good.safetensors"))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors: .*(corrupt|truncated|not a safetensors)"):
        load_model(cut)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not an mmva checkpoint"):
        load_model(tmp_path / "other.safetensors")


_PAYLOAD = textwrap.dedent("""
    import os, sys, torch
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + sys.argv[2],))
    torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": Evil()}, sys.argv[1])
""")


def test_a_checkpoint_carrying_a_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "last.ckpt"
    subprocess.run([sys.executable, "-c", _PAYLOAD, str(ckpt), str(marker)], check=True)
    assert ckpt.exists() and not marker.exists()
    with pytest.raises(CheckpointError, match="last.ckpt: refused: the file carries pickled objects"):
        load_training_state(ckpt)
    assert not marker.exists()  # the payload never ran
    # the same bytes presented as a deployable model are refused before any unpickling
    disguised = tmp_path / "model.safetensors"
    shutil.copy(ckpt, disguised)
    with pytest.raises(CheckpointError, match="model.safetensors: not a safetensors file .*never unpickles"):
        load_model(disguised)
    assert not marker.exists()
    # a plain resume state (tensors, numbers, strings, lists) loads
    save_training_state({"epoch": 2, "state_dict": {"w": torch.ones(2)}, "mmva": {"history": [{"a": 1.0}]}},
                        tmp_path / "ok.ckpt")
    assert load_training_state(tmp_path / "ok.ckpt")["epoch"] == 2


_FULL_DISK = textwrap.dedent("""
    import json, os, sys, torch
    from mmva.config import load_config
    from mmva.model.checkpoint import load_model, save_checkpoint, save_training_state, load_training_state
    from mmva.model.multimodal import MultimodalSentimentAnalyzer
    folder = sys.argv[1]
    cfg = load_config("tiny", ["model.video=null", "model.audio=null"])
    torch.manual_seed(0)
    first = MultimodalSentimentAnalyzer(cfg)
    st, ck = os.path.join(folder, "last.safetensors"), os.path.join(folder, "last.ckpt")
    save_checkpoint(first, cfg, st, extra={"epoch": 1})
    save_training_state({"epoch": 1, "state_dict": first.state_dict()}, ck)
    errors = []
    if sys.argv[2] == "tmpfs":  # fill the disk until writes fail
        try:
            with open(os.path.join(folder, "filler"), "wb") as fh:
                while True:
                    fh.write(b"0" * 65536)
                    fh.flush()
        except OSError as exc:
            errors.append(exc.errno)
    else:  # the kernel refuses any file larger than 64 KB from now on (EFBIG)
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
        errors.append(27)
    torch.manual_seed(1)
    second = MultimodalSentimentAnalyzer(cfg)
    for write in (lambda: save_checkpoint(second, cfg, st, extra={"epoch": 2}),
                  lambda: save_training_state({"epoch": 2, "state_dict": second.state_dict()}, ck)):
        try:
            write()
            errors.append("written")
        except OSError as exc:
            errors.append(exc.errno)
    if sys.argv[2] == "tmpfs":
        os.remove(os.path.join(folder, "filler"))
    back = load_model(st)
    same = all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), first.state_dict().values()))
    print(json.dumps({"errors": errors, "same": same, "epoch": back.checkpoint_metadata["extra"]["epoch"],
                      "ckpt_epoch": load_training_state(ck)["epoch"], "files": sorted(os.listdir(folder))}))
""")


def _run_full_disk(folder: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if shutil.which("unshare"):
        # A real full filesystem: a 3 MB tmpfs in a private mount namespace (as root, or as a user
        # where user namespaces are allowed).
        cmd = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
        mount = f"mount -t tmpfs -o size=3m tmpfs {folder} && exec \"$@\""
        proc = subprocess.run([*cmd, "sh", "-c", mount, "sh", sys.executable, "-c", _FULL_DISK, str(folder), "tmpfs"],
                              capture_output=True, text=True, env=env, timeout=240)
        if proc.returncode == 0:
            return json.loads(proc.stdout.strip().splitlines()[-1])
    # No mount namespaces here: the kernel's per-process file-size limit refuses the writes instead.
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(folder), "rlimit"], capture_output=True,
                          text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    result = _run_full_disk(folder)
    assert result["errors"][0] in (28, 27)  # ENOSPC (tmpfs) or EFBIG (file-size limit)
    assert result["errors"][1:] != ["written", "written"], result  # at least one save hit the full disk
    failed = [e for e in result["errors"][1:] if e != "written"]
    assert all(e in (28, 27) for e in failed)
    if result["errors"][1] != "written":
        assert result["same"] and result["epoch"] == 1  # the previous model is intact and loads
    if result["errors"][2] != "written":
        assert result["ckpt_epoch"] == 1
    # no temp file left behind
    assert result["files"] == ["last.ckpt", "last.safetensors"], result["files"]
