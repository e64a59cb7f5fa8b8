"""Typed, frozen configuration (house style rule 4).

A YAML file only sets defaults; ``load_config("reference", overrides=["train.epochs=3"])`` resolves
a named preset or a file path plus ``section.key=value`` overrides into an immutable :class:`Config`.
The resolved config is saved beside each run and inside each checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class DataConfig:
    """How clips are decoded and batched."""

    num_frames: int = 30  # sampled across the whole clip (the original took only the first 30)
    frame_size: int = 224  # square side fed to the video encoder
    sample_rate: int = 16000
    n_mels: int = 64
    n_fft: int = 1024
    hop_length: int = 512
    audio_frames: int = 300  # mel frames per clip (pad or crop), about 9.6 s at hop 512
    max_text_tokens: int = 128
    context_turns: int = 0  # previous utterances of the same dialogue prepended to the text
    batch_size: int = 16
    num_workers: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Which encoder serves each modality (None = modality not used) and the fusion sizes."""

    text: str | None = "bert-base-uncased"
    video: str | None = "r3d18"
    audio: str | None = "logmel-cnn"
    freeze_text: bool = True
    freeze_video: bool = True
    freeze_audio: bool = False
    encoder_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per encoder name
    projection_dim: int = 128
    fusion_dim: int = 256
    dropout: float = 0.3
    head_dropout: float = 0.2
    modality_dropout: float = 0.15  # chance per sample and modality of masking it in training


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpointing and logging."""

    epochs: int = 20
    lr: float = 1e-4
    weight_decay: float = 1e-5
    accumulate_grad_batches: int = 1
    grad_clip: float = 1.0
    precision: str = "auto"  # "auto": bf16 on CPU, bf16/fp16 on CUDA; or "32", "bf16-mixed", "16-mixed"
    scheduler: str = "cosine"  # "cosine" (with warmup), "plateau" or "none"
    warmup_ratio: float = 0.05
    label_smoothing: float = 0.05
    class_weights: bool = True
    sentiment_loss_weight: float = 1.0
    patience: int = 5  # early stopping on dev emotion weighted-F1
    save_top_k: int = 2
    seed: int = 42
    use_cache: bool = True  # read frozen-encoder features from the cache when possible
    cache_dir: str | None = None
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    limit_train_batches: float | int = 1.0
    log_every_n_steps: int = 10


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of a run."""

    name: str = "reference"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Config":
        """Build from a (possibly partial) nested dict; unknown keys are an error."""
        sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
        unknown = set(raw) - set(sections) - {"name"}
        if unknown:
            raise ValueError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {"name": raw.get("name", "custom")}
        for key, klass in sections.items():
            values = raw.get(key) or {}
            names = {f.name for f in dataclasses.fields(klass)}
            bad = set(values) - names
            if bad:
                raise ValueError(f"unknown key(s) in config section '{key}': {', '.join(sorted(bad))}")
            kwargs[key] = klass(**values)
        return cls(**kwargs)


def preset_names() -> list[str]:
    """Names of the configs that ship with mmva (``reference``, ``tiny``, ...)."""
    folder = resources.files("mmva") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _parse_value(text: str) -> Any:
    # YAML gives the user ints, floats, bools, null and lists with one rule.
    return yaml.safe_load(text)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a nested dict (returns a new dict)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) == 1 and parts[0] == "name":
            out["name"] = value
            continue
        if len(parts) != 2:
            raise ValueError(f"override {item!r}: expected section.key=value, e.g. train.epochs=3")
        section, key = parts
        out.setdefault(section, {})
        out[section][key] = _parse_value(value)
    return out


def load_config(name_or_path: str = "reference", overrides: list[str] | None = None) -> Config:
    """Resolve a preset name or a YAML path plus overrides.

    >>> load_config("tiny", ["train.epochs=2"]).train.epochs
    2
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.exists():
        raw = yaml.safe_load(path.read_text()) or {}
        raw.setdefault("name", path.stem)
    else:
        res = resources.files("mmva") / "configs" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise FileNotFoundError(
                f"config {name_or_path!r} is neither a file nor a preset ({', '.join(preset_names())})"
            )
        raw = yaml.safe_load(res.read_text()) or {}
        raw.setdefault("name", name_or_path)
    return Config.from_dict(apply_overrides(raw, overrides or []))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
