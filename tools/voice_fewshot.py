"""How the voice speaker head does with only k clips of a speaker known (issue 13 measurement).

    python tools/voice_fewshot.py --manifest runs/voice/speech.csv --features runs/voice/feats

Leave-one-corpus-out, as the shipped heads are scored: for each held-out corpus, the speaker head
(linear, input dropout 0.7, the shipped setting) is fitted on the other corpora's per-speaker z-scored
features; each held-out clip is then standardised as `mmva analyze` does for a speaker with k clips
(:meth:`mmva.model.voice.Standardizer.adapted`: the training population's statistics shrunk towards
the k clips' with weight k / (k + 5); the clip itself and k-1 other clips of its speaker drawn at
random) and scored. Prints the mean over corpora of UAR, accuracy and the most predicted class's share
per k, beside which the single-clip (utterance) head's LOCO figures in voice.json can be read.
``--features`` holds the cached ``whisper-b12.npz`` (the shipped head's middle-block feature; ``--whisper
whisper`` for the last layer's ``whisper.npz``) and ``acoustic.npz`` tables (rows in manifest order)
that `mmva voice-fit --work` caches.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def main() -> None:
    from mmva.labels import EMOTIONS
    from mmva.train.crossval import read_rows
    from mmva.train.voice_head import HeadSpec, fit_head, head_logits, scores, speaker_population, zscore_groups

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--features", required=True, help="folder with whisper-b12.npz (or --whisper's) and acoustic.npz")
    ap.add_argument("--whisper", default="whisper-b12", help="the Whisper feature cache: whisper-b12 (shipped) or whisper")
    ap.add_argument("--ks", default="1,2,3,5,10")
    ap.add_argument("--prior-weight", type=float, default=5.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = read_rows(args.manifest)
    y = np.array([EMOTIONS.index(r["emotion"]) for r in rows])
    spk, cor = np.array([r["speaker"] for r in rows]), np.array([r["corpus"] for r in rows])
    x = np.nan_to_num(np.concatenate([np.load(f"{args.features}/{n}.npz")["x"] for n in (args.whisper, "acoustic")],
                                     1)).astype(np.float64)
    rng = np.random.default_rng(0)
    heads = {}
    for c in sorted(set(cor)):
        te = cor == c
        head = fit_head(zscore_groups(x[~te], spk[~te]), y[~te], cor[~te], HeadSpec(normalization="speaker", dropout=0.7))
        pop = speaker_population(x[~te], spk[~te])
        heads[c] = (head, np.array(pop["mean"]), np.array(pop["std"]))
    out = {}
    for k in (int(v) for v in args.ks.split(",")):
        logits = np.zeros((len(y), len(EMOTIONS)), np.float32)
        for c, (head, pm, ps) in heads.items():
            for s in sorted(set(spk[cor == c])):
                idx = np.flatnonzero(spk == s)
                for i in idx:
                    others = rng.choice(idx[idx != i], size=min(k - 1, len(idx) - 1), replace=False) if k > 1 else []
                    f = x[np.concatenate([[i], others]).astype(int)]
                    a = len(f) / (len(f) + args.prior_weight)
                    mean, var = a * f.mean(0) + (1 - a) * pm, a * f.var(0) + (1 - a) * ps ** 2
                    logits[i] = head_logits(head, ((x[i] - mean) / np.sqrt(np.maximum(var, 1e-12)))[None])[0]
        per = [scores(logits[cor == c], y[cor == c]) for c in sorted(set(cor))]
        out[k] = {m: round(float(np.mean([p[key] for p in per])), 4)
                  for m, key in (("uar_mean", "uar"), ("accuracy_mean", "accuracy"),
                                 ("max_predicted_share_mean", "max_predicted_share"))}
        print(k, out[k], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
