"""`mmva encoders` and `mmva configs`: what ships with this installation."""

from __future__ import annotations

from rich.table import Table

from mmva.cli import app, console


@app.command("encoders")
def encoders_cmd(modality: str = "") -> None:
    """List registered encoders (name, modality, implementing class)."""
    from mmva.encoders.base import encoder_class, list_encoders

    table = Table("name", "modality", "class")
    for name in list_encoders(modality=modality or None):
        cls = encoder_class(name)
        table.add_row(name, cls.modality, cls.__name__)
    console.print(table)


@app.command("configs")
def configs_cmd() -> None:
    """List the config presets that ship with mmva."""
    from mmva.config import preset_names

    for name in preset_names():
        console.print(name)
