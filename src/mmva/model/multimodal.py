"""The reference multimodal model (SPEC section 1), generic over registered encoders.

Per modality: encoder -> projection to 128. Absent modalities (mask 0) take a learned "missing"
embedding instead of their projection, so absence is a mask, not zeros pretending to be data.
Fusion: concat (3 x 128 = 384) -> Linear 256 -> BatchNorm -> ReLU -> Dropout -> emotion (7) and
sentiment (3) heads.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from mmva.config import Config, ModelConfig
from mmva.encoders.base import Encoder, create_encoder, encoder_class
from mmva.labels import EMOTIONS, MODALITIES, SENTIMENTS

log = logging.getLogger("mmva")


def build_encoders(model: ModelConfig, data: Any | None = None, pretrained: bool = True) -> dict[str, Encoder]:
    """Create the configured encoder of each modality (options from the data config + overrides).

    ``pretrained=False`` builds the architectures without fetching pretrained weights (for a
    checkpoint, whose weights replace them: see :meth:`Encoder.untrained_options`).
    """
    from mmva.config import DataConfig

    data = data or DataConfig()
    out: dict[str, Encoder] = {}
    for modality in MODALITIES:
        name = getattr(model, modality)
        if not name:
            continue
        cls = encoder_class(name)
        if cls.modality != modality:
            raise ValueError(f"encoder {name!r} is a {cls.modality} encoder, configured for {modality}")
        options = {**cls.options_from_data(data), **model.encoder_options.get(name, {})}
        if not pretrained:
            options = cls.untrained_options(options)
        enc = create_encoder(name, **options)
        if getattr(model, f"freeze_{modality}"):
            enc.freeze()
        out[modality] = enc
    return out


class MultimodalSentimentAnalyzer(nn.Module):
    """Text + video + audio -> emotion (7) and sentiment (3) logits.

    >>> from mmva.config import load_config
    >>> cfg = load_config("tiny")
    >>> model = MultimodalSentimentAnalyzer(cfg.model, data=cfg.data)
    >>> out = model.fuse({}, masks={"text": torch.zeros(2)})
    >>> tuple(out["emotion"].shape)
    (2, 7)
    """

    def __init__(self, config: ModelConfig | Config | None = None, *, data: Any | None = None,
                 encoders: dict[str, Encoder] | None = None, pretrained: bool = True) -> None:
        super().__init__()
        # A whole run Config (e.g. from a checkpoint) is kept as `.config`; the model part drives the
        # architecture as `.model_config`.
        if isinstance(config, Config):
            data = data if data is not None else config.data
            cfg = config.model
        else:
            cfg = config or ModelConfig()
        self.config: ModelConfig | Config = config if isinstance(config, Config) else cfg
        self.model_config = cfg
        encs = encoders if encoders is not None else build_encoders(cfg, data, pretrained=pretrained)
        self.modalities = [m for m in MODALITIES if m in encs]
        if not self.modalities:
            raise ValueError("a model needs at least one modality")
        self.encoders = nn.ModuleDict(encs)
        d = cfg.projection_dim
        self.projections = nn.ModuleDict()
        for m, enc in encs.items():
            layers: list[nn.Module] = [nn.Linear(enc.output_dim, d)]
            if enc.projection_activation:
                layers += [nn.ReLU(), nn.Dropout(cfg.head_dropout)]
            self.projections[m] = nn.Sequential(*layers)
        # Learned stand-in for an absent modality (initialised small, trained with modality dropout).
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.randn(d) * 0.02) for m in self.modalities})
        self.fusion_layer = nn.Sequential(
            nn.Linear(d * len(self.modalities), cfg.fusion_dim), nn.BatchNorm1d(cfg.fusion_dim),
            nn.ReLU(), nn.Dropout(cfg.dropout),
        )
        self.emotion_classifier = nn.Sequential(
            nn.Linear(cfg.fusion_dim, 64), nn.ReLU(), nn.Dropout(cfg.head_dropout), nn.Linear(64, len(EMOTIONS)))
        self.sentiment_classifier = nn.Sequential(
            nn.Linear(cfg.fusion_dim, 64), nn.ReLU(), nn.Dropout(cfg.head_dropout), nn.Linear(64, len(SENTIMENTS)))

    # -- aliases matching the original attribute names ------------------------------------------
    @property
    def text_encoder(self) -> Encoder | None:
        return self.encoders["text"] if "text" in self.encoders else None

    @property
    def video_encoder(self) -> Encoder | None:
        return self.encoders["video"] if "video" in self.encoders else None

    @property
    def audio_encoder(self) -> Encoder | None:
        return self.encoders["audio"] if "audio" in self.encoders else None

    def frozen_modalities(self) -> list[str]:
        """Modalities whose encoder has no trainable parameter: their outputs can be cached."""
        return [m for m in self.modalities
                if not any(p.requires_grad for p in self.encoders[m].parameters())]

    def encode(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Run the encoders on collated inputs: ``{modality: (b, encoder_dim)}``."""
        out = {}
        for m, x in inputs.items():
            if x is None or m not in self.encoders:
                continue
            enc = self.encoders[m]
            if not any(p.requires_grad for p in enc.parameters()):
                enc.eval()  # frozen encoders keep inference-mode batch norm / dropout
                with torch.no_grad():
                    out[m] = enc(x)
            else:
                out[m] = enc(x)
        return out

    def fuse(self, features: dict[str, torch.Tensor], masks: dict[str, torch.Tensor] | None = None,
             modality_dropout: float | None = None) -> dict[str, torch.Tensor]:
        """Project encoder features, replace masked modalities, fuse and classify.

        ``features[m]``: (b, encoder_dim), or absent when the modality is missing for the whole batch.
        ``masks[m]``: (b,) 1 = present, 0 = absent. Missing entries default to present when the
        feature is given, absent otherwise.
        """
        masks = dict(masks or {})
        batch = next(iter(features.values())).shape[0] if features else next(iter(masks.values())).shape[0]
        device = self.missing[self.modalities[0]].device
        p_drop = self.model_config.modality_dropout if modality_dropout is None else modality_dropout
        mask_stack = []
        for m in self.modalities:
            if m in features:
                mk = masks.get(m)
                mk = torch.ones(batch, device=device) if mk is None else mk.to(device).float()
            else:
                mk = torch.zeros(batch, device=device)
            mask_stack.append(mk)
        mask = torch.stack(mask_stack, dim=1)  # (b, modalities)
        if self.training and p_drop > 0:
            keep = (torch.rand_like(mask) >= p_drop).float()
            dropped = mask * keep
            # never drop every present modality of a sample
            none_left = dropped.sum(1, keepdim=True) == 0
            mask = torch.where(none_left, mask, dropped)
        parts = []
        for i, m in enumerate(self.modalities):
            missing = self.missing[m].unsqueeze(0).expand(batch, -1)
            if m in features:
                proj = self.projections[m](features[m].float())
                mk = mask[:, i:i + 1]
                parts.append(mk * proj + (1 - mk) * missing)
            else:
                parts.append(missing)
        fused = self.fusion_layer(torch.cat(parts, dim=1))  # (b, 384) -> (b, 256)
        return {"emotion": self.emotion_classifier(fused), "sentiment": self.sentiment_classifier(fused)}

    def forward(self, text_inputs: Any = None, video_frames: torch.Tensor | None = None,
                audio_features: torch.Tensor | None = None, masks: dict[str, torch.Tensor] | None = None,
                features: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The original signature; ``features`` supplies cached encoder outputs per modality instead."""
        raw = {"text": text_inputs, "video": video_frames, "audio": audio_features}
        feats = dict(features or {})
        feats.update(self.encode({m: x for m, x in raw.items() if m not in feats}))
        return self.fuse(feats, masks)


# The original system's spelling.
MultimodelSentimentAnalyzer = MultimodalSentimentAnalyzer
