"""`mmva live [SOURCE]`: utterances of a microphone, a file or a stream, printed as they finish.

A thin layer over :func:`mmva.analyze.stream.run_live`. Exit codes: 0 done, 1 the source failed,
2 bad usage.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer
from rich.markup import escape

from mmva.cli import app, console, face_detector_option, load_model, pick_model, text_model_option


def _line(u: Any, delay: float | None) -> str:
    from mmva.analyze.report import clock

    emo = ", ".join(f"{e['label']} {e['confidence']:.0%}" for e in u.emotions[:2]) or "-"
    sen = f"{u.sentiments[0]['label']} {u.sentiments[0]['confidence']:.0%}" if u.sentiments else "-"
    late = f" [dim](+{delay:.1f} s)[/dim]" if delay is not None else ""
    return (f"{clock(u.start_time)}-{clock(u.end_time)}  [bold]{emo}[/bold] · {sen} · "
            f"{'+'.join(u.modalities) or 'none'}  {escape(u.text) or r'[no words]'}{late}")


@app.command("live")
def live_cmd(
    source: Optional[str] = typer.Argument(None, help="A file or URL PyAV opens (rtsp://, http://, s3://...); "
                                                     "none: the default microphone (needs mmva[live])."),
    realtime: bool = typer.Option(False, "--realtime", help="Read SOURCE as it plays (as a live stream); "
                                                            "without it, as fast as the analysis goes."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Also write the timeline as JSON here at the end."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per event (partials too) on stdout."),
    partials: bool = typer.Option(False, "--partials", help="Show partial transcripts while a person speaks."),
    frames: bool = typer.Option(True, "--frames/--no-frames", help="Read faces from SOURCE's video."),
    model: Optional[str] = typer.Option(None, "--model", help="A `mmva train` checkpoint, default-model folder "
                                                              "or model.tar.gz (default: the shipped model)."),
    text_model: str = text_model_option(),
    face_detector: Optional[str] = face_detector_option(),
    asr_model: Optional[str] = typer.Option(None, "--asr-model", help="faster-whisper model folder or name."),
    top_k: int = typer.Option(3, "--top-k", min=1, max=7, help="Emotions and sentiments kept per utterance."),
    input_device: Optional[str] = typer.Option(None, "--input-device", help="Microphone (sounddevice name or index)."),
) -> None:
    """Analyse speech live: each utterance is printed when it ends (Ctrl-C stops; the last one is finished)."""
    from mmva.analyze.stream import (Finished, LiveAnalyzer, LiveOptions, Partial, media_chunks,
                                     microphone_chunks, run_live)
    from mmva.analyze.writers import get_writer
    from mmva.io.media import MediaError

    out = console if not as_json else None

    def on_event(event: Any) -> None:
        if as_json:
            print(json.dumps(event.to_dict()), flush=True)
        elif isinstance(event, Finished):
            console.print(_line(event.utterance, event.delay if realtime or source is None else None))
        elif isinstance(event, Partial) and partials:
            console.print(f"[dim]… {escape(event.text)}[/dim]")

    chosen: Any = pick_model(model, text_model)
    if face_detector is not None:  # else LiveAnalyzer loads the model, as before the option
        chosen = load_model(chosen, "cpu", face_detector)
    live = LiveAnalyzer(chosen, asr_model=asr_model,
                        options=LiveOptions(top_k=top_k, partial_every=1.0 if (partials or as_json) else 0))
    live.warm_up()
    if source is None:
        device: Any = int(input_device) if input_device and input_device.isdigit() else input_device
        try:
            chunks = microphone_chunks(device=device)
            if out is not None:
                out.print("listening on the default microphone; Ctrl-C stops")
        except RuntimeError as err:
            console.print(f"[red]error:[/red] {escape(str(err))}")
            raise typer.Exit(2)
    else:
        chunks = media_chunks(source, frames=frames)
    try:
        timeline = run_live(chunks, live, realtime=realtime or source is None, on_event=on_event,
                            source=source or "microphone")
    except (MediaError, RuntimeError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")
        raise typer.Exit(1)
    if output:
        get_writer("json").write(timeline, output)
        if out is not None:
            out.print(f"wrote {escape(output)}")
    if out is not None:
        s = timeline.summary
        out.print(f"{s['n_utterances']} utterance(s) in {timeline.duration or 0:.1f} s; dominant: "
                  f"{s['dominant_emotion'] or '-'} / {s['dominant_sentiment'] or '-'}")
    sys.stdout.flush()
