import numpy as np
import torch

from mmva import MultimodalSentimentAnalyzer, MultimodelSentimentAnalyzer, load_config
from mmva.config import ModelConfig
from mmva.io.clip import DecodedClip


def _batch(model, clips):
    return {m: enc.collate([enc.prepare(c) for c in clips]) for m, enc in model.encoders.items()}


def test_original_spelling_is_the_same_class():
    assert MultimodelSentimentAnalyzer is MultimodalSentimentAnalyzer


def test_reference_architecture_forward_backward():
    """The full reference model (BERT-base + R3D-18 + mel CNN, random init) on the seed's input shapes."""
    cfg = load_config("reference", ["data.num_frames=30", "data.frame_size=112"])
    model = MultimodalSentimentAnalyzer(cfg.model, data=cfg.data)
    assert model.text_encoder.output_dim == 768 and model.video_encoder.output_dim == 512
    assert model.fusion_layer[0].in_features == 384 and model.fusion_layer[0].out_features == 256
    text = model.text_encoder.tokenizer(["I love it", "what?"], padding="max_length", max_length=16,
                                        truncation=True, return_tensors="pt")
    video = torch.rand(2, 30, 3, 112, 112)  # [batch, frames, channels, height, width]
    audio = torch.randn(2, 1, 64, 300)  # [batch, 1, mels, time]
    out = model(dict(text), video, audio)
    assert out["emotion"].shape == (2, 7) and out["sentiment"].shape == (2, 3)
    assert torch.isfinite(out["emotion"]).all()
    (out["emotion"].sum() + out["sentiment"].sum()).backward()
    assert model.projections["video"][0].weight.grad is not None
    # frozen BERT gets no gradient, the trainable parts do
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert "text" in model.frozen_modalities()


def test_missing_modality_is_a_mask_not_zeros():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = MultimodalSentimentAnalyzer(cfg.model, data=cfg.data).eval()
    clip = DecodedClip(text="I am so happy today", frames=np.random.randint(0, 255, (10, 40, 40, 3), np.uint8),
                       audio=(np.random.randn(16000) * 0.1).astype(np.float32))
    batch = _batch(model, [clip, clip])
    full = model(batch["text"], batch["video"], batch["audio"])
    no_audio = model(batch["text"], batch["video"], None)
    masked = model(batch["text"], batch["video"], batch["audio"], masks={"audio": torch.zeros(2)})
    torch.testing.assert_close(no_audio["emotion"], masked["emotion"])
    assert not torch.allclose(full["emotion"], no_audio["emotion"])
    only_text = model(batch["text"], None, None)
    assert torch.isfinite(only_text["emotion"]).all()


def test_modality_dropout_never_drops_everything():
    model = MultimodalSentimentAnalyzer(ModelConfig(text="tiny-text", video=None, audio="logmel-cnn",
                                                    freeze_text=False, modality_dropout=1.0))
    model.train()
    feats = {"text": torch.randn(4, 32), "audio": torch.randn(4, 128)}
    out = model.fuse(feats)
    assert out["emotion"].shape == (4, 7)
