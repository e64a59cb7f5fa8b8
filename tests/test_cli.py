"""User-supplied strings printed by the CLI (paths, texts, error messages) are text, never Rich markup:
a folder or a transcript containing ``[/x]`` or ``[bold]`` prints as it is and crashes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmva.cli import app
from tests.media import random_bytes_file

# "[/x]" closes a tag never opened (Rich raises MarkupError); "[bold]" would silently vanish.
ODD = "in[/x] [bold]b"


@pytest.fixture()
def odd(tmp_path) -> Path:
    """A folder whose path contains ``[/x] [bold]`` (a file name cannot hold "/", a path can)."""
    root = tmp_path / "in["
    folder = root / "x] [bold]b"
    folder.mkdir(parents=True)
    assert ODD in str(folder)
    return folder


def _flat(text: str) -> str:
    """Output without the line breaks and padding Rich adds when it wraps a long line."""
    return " ".join(text.split())


def _run(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        f"{type(result.exception).__name__}: {result.exception}"
    assert "MarkupError" not in result.output
    return result


def test_analyze_prints_odd_paths_and_texts_verbatim(odd, tmp_path):
    transcript = odd / "notes [i].txt"
    transcript.write_text("Love [/x] it\n")
    out = tmp_path / "out"
    result = _run("analyze", str(transcript), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "Love [/x] it" in result.output  # the table cell, brackets and all
    assert f"{ODD}/notes [i].txt" in _flat(result.output)  # the table title
    assert json.loads((out / "notes [i].mmva.json").read_text())["utterances"][0]["text"] == "Love [/x] it"


def test_analyze_batch_with_odd_names_reports_every_file(odd, tmp_path):
    (odd / "a [b].srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nWhat a wonderful day [/x]\n")
    random_bytes_file(odd / "broken [c].mp4")
    result = _run("analyze", str(odd.parent), "-o", str(tmp_path / "out"))
    text = _flat(result.output)
    assert result.exit_code == 1, result.output
    assert _flat(f"ok: {odd}/a [b].srt") in text
    assert f"failed: {odd}/broken [c].mp4" in text and "analysed 1 file(s), 1 failed" in text


def test_error_messages_with_odd_paths(odd, tmp_path):
    missing = str(odd / "missing")
    cases = [
        (["analyze", f"{missing}.mp4"], 1),
        (["analyze", str(odd / "a.txt"), "-o", str(odd / "f.txt" / "out")], 2),
        (["train", "--data", missing, "--config", "tiny", "--out", str(odd / "run")], 2),
        (["evaluate", "--checkpoint", f"{missing}.safetensors", "--data", missing], 2),
        (["extract", "--data", missing, "--cache", str(odd / "cache"), "--no-progress"], 2),
        (["speech-manifest", missing, str(odd / "m.csv")], 2),
        (["crossval", "--data", f"{missing}.csv", "--out", str(odd / "cv")], 2),
        (["voice-train", "--data", f"{missing}.csv", "--out", str(odd / "voice"), "--no-cv"], 2),
    ]
    (odd / "a.txt").write_text("fine\n")
    (odd / "f.txt").write_text("a file where a folder is needed\n")
    for args, code in cases:
        result = _run(*args)
        assert result.exit_code == code, (args, result.output)
        assert _flat(ODD) in _flat(result.output), (args, result.output)


def test_commands_that_report_success_print_odd_paths(odd, tmp_path):
    src = odd / "src"
    src.mkdir()
    (src / "x [y].txt").write_text("hi")
    result = _run("copy", str(src), str(odd / "dst [z]"))
    assert result.exit_code == 0 and _flat(f"copied to {odd}/dst [z]") in _flat(result.output)
    manifest = odd / "m.csv"
    manifest.write_text("path,text,emotion\nmissing [q].mp4,hello,joy\n")
    result = _run("check-data", str(manifest), "--split", "dev [/s]")
    assert result.exit_code == 0, result.output
    assert "missing [q].mp4" in _flat(result.output) and "dev [/s]" in result.output


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Text with markup look-alikes, brackets, quotes, formula starts, controls and any Unicode.
ODD_TEXT = st.lists(st.one_of(st.sampled_from(list("[]/\\=+-@\t\r\n<>&\"',;:") + ["[/x]", "[bold]", "[/]", "[link=x]"]),
                              st.characters(blacklist_categories=("Cs",))), max_size=30).map("".join)


@settings(max_examples=150, deadline=None)
@given(source=ODD_TEXT, text=ODD_TEXT, problem=ODD_TEXT)
def test_any_text_prints_verbatim_and_writes_safely(source, text, problem):
    import csv
    import io

    from rich.console import Console

    from mmva.analyze.timeline import Timeline
    from mmva.analyze.writers import get_writer
    from mmva.cli.analyze import timeline_table
    from mmva.types import Utterance

    timeline = Timeline(source=source, utterances=[Utterance(text=text, start_time=0.0, end_time=1.0)],
                        problems=[problem])
    console = Console(file=io.StringIO(), width=10_000, color_system=None)
    console.print(timeline_table(timeline))  # never a MarkupError
    shown = console.file.getvalue()
    words = " ".join(text.split())
    if words and text.isprintable():  # (Rich expands tabs and drops control characters)
        assert words in " ".join(shown.split())  # every bracket survives
    rows = list(csv.DictReader(io.StringIO(get_writer("csv").to_string(timeline), newline="")))
    assert len(rows) == 1 and rows[0]["text"] in (text, "'" + text)
    assert not rows[0]["text"].startswith(("=", "+", "-", "@", "\t", "\r"))
    html = get_writer("html").to_string(timeline)
    tag = "<" + text.split("<", 1)[1] if "<" in text else ""
    if tag[1:2].isalpha():
        assert tag not in html  # escaped: never a tag in the report


def test_unreadable_file_fails_at_once_naming_it_without_loading_models(tmp_path):
    # A cold `mmva analyze` probes the file before loading anything: a bad file is reported by name
    # and no model library (torch, transformers, librosa) was ever imported (issue 15).
    import subprocess
    import sys

    bad = random_bytes_file(tmp_path / "broken.mp4")
    code = ("import sys\nfrom mmva.cli import app\nsys.argv = ['mmva', 'analyze', sys.argv[1], '-q', '-o', sys.argv[2]]\n"
            "try:\n    app()\nexcept SystemExit as e:\n    code = e.code\n"
            "print('HEAVY', [m for m in ('torch', 'transformers', 'librosa', 'fastapi', 'boto3') if m in sys.modules])\n"
            "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(bad), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "broken.mp4" in proc.stderr and "not a readable media file" in proc.stderr
    assert "HEAVY []" in proc.stdout
