"""`mmva analyze PATH...`: emotion timeline of videos, audio files, subtitles or transcripts.

A thin layer over :func:`mmva.analyze.analyze` / :func:`mmva.analyze.analyze_batch`.
Exit codes: 0 all analysed, 1 at least one input failed, 2 bad usage.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from mmva.cli import app, console, face_detector_option, load_model, pick_model, text_model_option

DEVICES = ("cpu", "cuda", "auto")


def timeline_table(timeline: Any, max_rows: int = 200) -> Table:
    """A readable Rich table of a timeline's utterances."""
    from mmva.analyze.report import clock

    from rich.text import Text

    # User text goes in as Text, never as markup: escape() leaves a backslash before "[" to Rich,
    # which then drops it ("\\[" printed "[").
    s = timeline.summary
    title = Text(f"{timeline.source} · {s['n_utterances']} utterance(s) · dominant: "
                 f"{s['dominant_emotion'] or '-'} / {s['dominant_sentiment'] or '-'}")
    who = any(u.speaker for u in timeline.utterances)
    if who:
        title.append(f" · {s.get('n_speakers', 0)} speaker(s)")
    table = Table("start", "end", *(["speaker"] if who else []), "text", "emotion", "sentiment", "modalities",
                  title=title, title_justify="left")
    for u in timeline.utterances[:max_rows]:
        emo = ", ".join(f"{e['label']} {e['confidence']:.0%}" for e in u.emotions[:2]) or "-"
        sen = f"{u.sentiments[0]['label']} {u.sentiments[0]['confidence']:.0%}" if u.sentiments else "-"
        table.add_row(clock(u.start_time), clock(u.end_time), *([Text(u.speaker or "-")] if who else []),
                      Text(u.text) if u.text else Text("[no words]"), emo, sen, "+".join(u.modalities) or "none")
    if len(timeline.utterances) > max_rows:
        table.caption = f"... {len(timeline.utterances) - max_rows} more in the written files"
    return table


def _progress_bar(quiet: bool) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description:<28}"), BarColumn(),
                    TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                    console=console, transient=True, disable=quiet)


@app.command("analyze")
def analyze_cmd(
    paths: Optional[list[str]] = typer.Argument(None, help="Videos, audio files, .srt/.vtt, .txt transcripts "
                                                "or folders (s3:// URIs too)."),
    subtitles: Optional[str] = typer.Option(None, "--subtitles", "-s",
                                            help="Segment by this .srt/.vtt instead of speech recognition."),
    asr_model: Optional[str] = typer.Option(None, "--asr-model",
                                            help="faster-whisper model folder or name "
                                                 "(default: the offline tiny.en)."),
    fmt: str = typer.Option("json", "--format", "-f", help="Comma-separated: json,csv,srt,vtt,html (or all)."),
    out: str = typer.Option(".", "--out", "-o", help="Folder (or s3:// prefix) for the output files."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no table, only errors."),
    top_k: int = typer.Option(3, "--top-k", min=1, max=7, help="Emotions listed per utterance."),
    sample: bool = typer.Option(False, "--sample",
                                help="Analyse the short talking video that ships with mmva (no network)."),
    regenerate: bool = typer.Option(False, "--regenerate",
                                    help="With --sample: make the sample anew (needs espeak-ng, scikit-image)."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="A `mmva train` checkpoint (.safetensors), a default-model folder or "
                                             "a model.tar.gz, local or s3:// (default: the shipped model)."),
    text_model: str = text_model_option(),
    speakers: Optional[int] = typer.Option(None, "--speakers", min=1,
                                           help="Number of speakers, when known (default: found automatically)."),
    min_speakers: Optional[int] = typer.Option(None, "--min-speakers", min=1, help="At least this many speakers."),
    max_speakers: Optional[int] = typer.Option(None, "--max-speakers", min=1, help="At most this many speakers."),
    diarize: bool = typer.Option(True, "--diarize/--no-diarize",
                                 help="Name the speakers (Speaker 1, 2, ...) from their voices."),
    face_detector: Optional[str] = face_detector_option(),
    embed_video: bool = typer.Option(False, "--embed-video",
                                     help="With -f html: write a small playable copy of the media "
                                          "(NAME.mmva.mp4) beside the report for its player."),
) -> None:
    """Per-utterance emotion and sentiment timeline; writes NAME.mmva.json (and other formats)."""
    from mmva.analyze.writers import parse_formats

    try:
        formats = parse_formats(fmt)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--format") from None
    if device not in DEVICES:
        raise typer.BadParameter(f"{device!r} is not one of {', '.join(DEVICES)}", param_hint="--device")
    if embed_video and "html" not in formats:
        raise typer.BadParameter("the copy is for the HTML report's player: add html to -f", param_hint="--embed-video")
    who = _speaker_options(speakers, min_speakers, max_speakers, diarize)
    with _errors_only(quiet):
        predictor = load_model(pick_model(model, text_model), device, face_detector)
        _analyze_files(list(paths or []), subtitles, formats, out, quiet, sample, regenerate,
                       {"asr_model": asr_model, "device": device, "top_k": top_k, "model": predictor, **who},
                       embed_video)


def _speaker_options(speakers: int | None, min_speakers: int | None, max_speakers: int | None,
                     diarize: bool) -> dict[str, Any]:
    """The speaker arguments of ``analyze()``, checked before any work (bad usage: exit 2)."""
    from mmva.analyze.diarize import DiarizeOptions
    from mmva.encoders.weights import WeightsNotFound

    who = {"speakers": speakers, "min_speakers": min_speakers, "max_speakers": max_speakers}
    try:
        if not diarize and any(v is not None for v in who.values()):
            raise ValueError("--speakers/--min-speakers/--max-speakers need diarization (drop --no-diarize)")
        DiarizeOptions(**who)
        if any(v is not None for v in who.values()):
            from mmva.encoders.speaker import resemblyzer_weights

            resemblyzer_weights()
    except (ValueError, WeightsNotFound) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    return {**who, "diarize": diarize}


@contextmanager
def _errors_only(quiet: bool) -> Iterator[None]:
    """--quiet: hide the warnings of the libraries underneath too (restored afterwards)."""
    if not quiet:
        yield
        return
    names = ("", "mmva", "faster_whisper")
    levels = {n: logging.getLogger(n).level for n in names}
    env = os.environ.get("TRANSFORMERS_VERBOSITY")
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"  # read when transformers is first imported
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        if env is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = env


def _analyze_files(inputs: list[str], subtitles: str | None, formats: list[str], out: str, quiet: bool,
                   sample: bool, regenerate: bool, kwargs: dict[str, Any], embed_video: bool = False) -> None:
    from mmva.analyze import analyze, expand_inputs
    from mmva.analyze.writers import OutputError, check_output_dir, write_outputs
    from mmva.io.media import MediaError

    try:
        check_output_dir(out)  # before the work: an unwritable -o would otherwise lose it all
    except OutputError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    if sample:
        inputs.append(_make_sample(out, quiet, regenerate))
    if not inputs:
        console.print("[red]nothing to analyse:[/] give a video, audio file, subtitle file, transcript or "
                      "folder, or --sample")
        raise typer.Exit(2)
    files = expand_inputs(inputs)
    if subtitles and len(files) != 1:
        console.print("[red]--subtitles applies to a single input[/]")
        raise typer.Exit(2)
    if not files:
        console.print(f"[red]no media, subtitle or transcript files found in {escape(', '.join(inputs))}[/]")
        raise typer.Exit(2)
    stdout = Console()
    if len(files) == 1 and not Path(inputs[0]).is_dir():
        with _progress_bar(quiet) as bar:
            task = bar.add_task("starting", total=1.0)
            try:
                timeline = analyze(files[0], subtitles=subtitles,
                                   progress=lambda stage, f: bar.update(task, description=stage, completed=f),
                                   **kwargs)
            except Exception as exc:  # noqa: BLE001 - the message names the file and the problem
                console.print(f"[red]error:[/] {escape(_message(files[0], exc))}", soft_wrap=True)
                raise typer.Exit(1) from None
        try:
            written = write_outputs(timeline, out, formats, embed_video=embed_video)
        except (OSError, MediaError) as exc:
            console.print(f"[red]error:[/] cannot write the outputs of {escape(files[0])}: {escape(str(exc))}",
                          soft_wrap=True)
            raise typer.Exit(1) from None
        if not quiet:
            stdout.print(timeline_table(timeline))
            for p in timeline.problems:
                console.print(f"[yellow]note:[/] {escape(p)}", soft_wrap=True)
            console.print("wrote " + escape(", ".join(written)), soft_wrap=True)
        return
    result = _run_batch(inputs, len(files), out, formats, quiet, {**kwargs, "embed_video": embed_video})
    console.print(escape(result.summary()), style="red" if result.failed else None, highlight=False, soft_wrap=True)
    raise typer.Exit(1 if result.failed else 0)


def _run_batch(inputs: list[str], n_files: int, out: str, formats: list[str], quiet: bool,
               kwargs: dict[str, Any]) -> Any:
    from mmva.analyze import analyze_batch

    with _progress_bar(quiet) as bar:
        overall = bar.add_task(f"{n_files} file(s)", total=n_files)
        current = bar.add_task("", total=1.0)

        def on_result(src: str, timeline: Any, error: str | None) -> None:
            bar.advance(overall)
            if error:
                bar.console.print(f"[red]failed:[/] {escape(_message(src, error))}", soft_wrap=True)
            elif not quiet:
                s = timeline.summary
                bar.console.print(f"[green]ok:[/] {escape(src)}: {s['n_utterances']} utterance(s), "
                                  f"dominant {s['dominant_emotion'] or '-'}", soft_wrap=True)

        def progress(stage: str, f: float) -> None:
            bar.update(current, description=stage, completed=f)

        return analyze_batch(inputs, out_dir=out, formats=formats, on_result=on_result, progress=progress,
                             **kwargs)


def _message(src: str, exc: BaseException | str) -> str:
    text = str(exc) or type(exc).__name__
    return text if text.startswith(src) else f"{src}: {text}"


def _make_sample(out: str, quiet: bool, regenerate: bool = False) -> str:
    import shutil
    from importlib import resources

    from mmva.io import storage

    if storage.is_remote(out):
        import tempfile

        out = tempfile.mkdtemp(prefix="mmva-sample-")
    path = Path(out) / "mmva-sample.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    shipped = resources.files("mmva") / "assets" / "sample" / "mmva-sample.mp4"
    if shipped.is_file() and not regenerate:
        # The shipped sample needs neither espeak-ng nor scikit-image on the user's machine.
        with resources.as_file(shipped) as src:
            shutil.copyfile(src, path)
        if not quiet:
            console.print(f"sample talking video: {escape(str(path))}")
        return str(path)
    from mmva.analyze.sample import make_sample_video

    if not quiet:
        console.print(f"generating a sample talking video: {escape(str(path))}")
    try:
        make_sample_video(path)
    except (ImportError, FileNotFoundError, RuntimeError) as exc:
        console.print(f"[red]cannot make the sample video:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    return str(path)
