"""Set the default model's fusion weights from each head's measured reliability on data it never saw.

    python tools/fusion_weights.py            # print the weights and the figures that chose them
    python tools/fusion_weights.py --write    # also store them in mmva/assets/default/config.json
    python tools/fusion_weights.py --model accurate --write   # the accurate text model's folder

No paired multimodal data exists here (MELD's clips are not available), so the weights cannot be
learned. Instead each modality's weight is its *information gain* on held-out data relative to the
text's: the share of the label uncertainty its calibrated probabilities remove,

    IG = 1 - NLL(calibrated predictions) / H(labels)

- text: MELD dev (the calibrated default text model; H from dev's label distribution);
- voice: leave-one-corpus-out predictions of the shipped speaker head (each corpus scored by a head
  that never heard it; H = log of the classes that corpus has), mean over corpora;
- face: the shipped network on FER+ test (unseen faces) and JAFFE (an unseen dataset), averaged.

w_m = min(max(IG_m, 0) / IG_text, 1), rounded to 0.05. Under log-linear pooling of calibrated heads this gives a
head that removes half as much uncertainty as the text half the text's say. The cap at the text's weight:
the text is the only head measured on the target domain (MELD); the face's figure leans on FER+ test,
which is unseen faces but the training distribution (on JAFFE alone its gain is about zero).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "mmva" / "assets"


def text_gain(model: str = "default") -> dict:
    dev = json.loads((ASSETS / model / "dev_metrics.json").read_text())
    counts = [sum(row) for row in dev["calibrated_crossfit"]["emotion"]["confusion_matrix"]]
    n = sum(counts)
    entropy = -sum(c / n * math.log(c / n) for c in counts if c)
    nll = dev["calibration"]["emotion"]["nll_after"]
    return {"source": "MELD dev, calibrated text model", "nll": nll, "label_entropy": round(entropy, 4),
            "information_gain": round(1 - nll / entropy, 4)}


def voice_gain() -> dict:
    # the shipped speaker head's own leave-one-corpus-out scores (calibrated), as its voice.json records them
    shipped = json.loads((ASSETS / "voice" / "voice.json").read_text())["scores"]["speaker"]["loco_per_corpus"]
    per = {c: round(m["information_gain"], 4) for c, m in shipped.items()}
    return {"source": "leave-one-corpus-out, shipped speaker head (voice.json)", "per_corpus": per,
            "information_gain": round(sum(per.values()) / len(per), 4)}


def face_gain() -> dict:
    import numpy as np

    res = json.loads((ROOT / "benchmarks" / "results" / "face_heads.json").read_text())
    per = {name: res[name]["mmva"]["information_gain"] for name in ("ferplus_test", "jaffe")}
    return {"source": "FER+ test and JAFFE (cross-dataset), shipped network", "per_set": per,
            "information_gain": round(float(np.mean(list(per.values()))), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--model", default="default", choices=["default", "accurate"],
                    help="whose text figure sets the scale, and whose config.json --write updates")
    args = ap.parse_args()
    figures = {"text": text_gain(args.model), "audio": voice_gain(), "video": face_gain()}
    base = figures["text"]["information_gain"]
    weights = {m: round(round(min(max(f["information_gain"], 0.0) / base, 1.0) / 0.05) * 0.05, 2)
               for m, f in figures.items()}
    weights["text"] = 1.0
    print(json.dumps({"weights": weights, "figures": figures}, indent=1))
    if args.write:
        path = ASSETS / args.model / "config.json"
        cfg = json.loads(path.read_text())
        cfg["fusion"]["weights"] = weights
        cfg["fusion"]["chosen_by"] = {"rule": "w = min(max(IG, 0) / IG_text, 1), IG = 1 - NLL / H(labels) on held-out data "
                                              "(tools/fusion_weights.py)", "figures": figures}
        path.write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
