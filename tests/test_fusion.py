"""Issue 3 part 6: on the generated MELD-format corpus each modality alone beats chance, the fusion
of all three beats the best single modality, and the fused checkpoint still evaluates with a
modality removed.

Trained with the project's trainer (``mmva.train.fit.fit``, the tiny config, fixed seeds). In the
generated corpus about a quarter of the clips carry another class's cue in exactly one modality
(``mmva.data.synth``), so one modality is right at most ~75 % of the time while a model that
weighs all three can outvote the odd one out. Measured dev emotion weighted-F1 (12 clips per
emotion and split, 12 epochs, corpus seeds 0/1, train seeds 0/1/2): text 0.53-0.55, video
0.73-0.76, audio 0.71-0.75, fusion 0.82-0.85.
"""

from __future__ import annotations

import pytest

from mmva.config import load_config
from mmva.labels import MODALITIES

CHANCE = 1 / 7  # the corpus is balanced over the 7 emotions
N_DEV = 7 * 12
ONLY = {"text": ["model.video=null", "model.audio=null"], "video": ["model.text=null", "model.audio=null"],
        "audio": ["model.text=null", "model.video=null"], "fusion": []}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    from mmva.data import make_corpus

    # 84 clips per split: one clip is 1.2 points of dev accuracy, so the fusion margin (~8 points) is
    # several clips wide rather than one lucky clip.
    return str(make_corpus(tmp_path_factory.mktemp("fusion_corpus"), n_per_class=12, seed=0))


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict:
    """One fit per variant: text only, video only, audio only and the fusion of all three."""
    from mmva.train.fit import fit

    out = {}
    for name, overrides in ONLY.items():
        cfg = load_config("tiny", ["train.epochs=12", "train.seed=0", *overrides])
        out[name] = fit(cfg, corpus, str(tmp_path_factory.mktemp(f"run_{name}")), progress=False)
    return out


def _f1(result) -> float:
    return result.metrics["emotion"]["weighted_f1"]


def test_each_single_modality_beats_chance(runs):
    for name in ("text", "video", "audio"):
        m = runs[name].metrics
        assert m["emotion"]["support"] == N_DEV and m["skipped_steps"] == []
        assert m["emotion"]["accuracy"] > 2 * CHANCE, (name, m["emotion"])
        assert _f1(runs[name]) > 2 * CHANCE, (name, m["emotion"])


def test_fusion_beats_the_best_single_modality(runs):
    from mmva.model.checkpoint import read_metadata

    scores = {name: round(_f1(r), 3) for name, r in runs.items()}
    print("dev emotion weighted-F1:", scores)  # shown with pytest -s
    assert scores["fusion"] > max(scores["text"], scores["video"], scores["audio"]), scores
    fused = runs["fusion"].metrics["emotion"]["accuracy"]
    assert fused > max(runs[n].metrics["emotion"]["accuracy"] for n in ("text", "video", "audio"))
    config = read_metadata(runs["fusion"].best_checkpoint)["config"]["model"]
    assert all(config[m] for m in MODALITIES)  # really the three-modality model
    assert read_metadata(runs["text"].best_checkpoint)["config"]["model"]["video"] is None


def test_fused_checkpoint_evaluates_with_a_modality_removed(runs, corpus):
    from mmva.train.evaluate import evaluate

    best = runs["fusion"].best_checkpoint
    full = evaluate(best, corpus, "dev")
    assert full["evaluated"] == N_DEV
    assert full["emotion"]["weighted_f1"] == pytest.approx(_f1(runs["fusion"]), abs=1e-6)
    for removed in MODALITIES:
        res = evaluate(best, corpus, "dev", drop=[removed])
        assert res["evaluated"] == N_DEV and res["dropped_modalities"] == [removed]
        assert res["modalities_used"][removed] == 0
        assert all(res["modalities_used"][m] == N_DEV for m in MODALITIES if m != removed)
        # the two modalities left still carry the label: degraded, not broken
        assert res["emotion"]["accuracy"] > 2 * CHANCE, (removed, res["emotion"])
        assert res["emotion"]["weighted_f1"] <= full["emotion"]["weighted_f1"] + 0.05, (removed, res["emotion"])
