"""Which Whisper encoder layer carries emotion: the layer study of docs/voice.md ("Which Whisper layer").

Every clip of a speech manifest goes through Whisper tiny.en's front end and all four encoder blocks
(mmva.encoders.whisper_numpy); each block's states are pooled to mean + std, stored per block
(resumable, chunk by chunk), and each block (beside the acoustic statistics that `mmva voice-fit`
caches) is scored leave-one-corpus-out with the shipped speaker head's recipe.

    python tools/voice_layers.py --manifest runs/voice/speech.csv --work runs/voice/feats [--blocks 0,1,2,3,4]

About 70 ms a clip for the features on one core (6,517 clips: ~8 min), then ~1 min a row.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def block_tables(manifest: str, work: Path) -> np.ndarray:
    """(clips, 5, 768): front end and blocks 1-4, each pooled to mean + std over frames."""
    from mmva.encoders.whisper_states import WhisperBlockStates, WhisperStates
    from mmva.train.crossval import read_rows
    from mmva.train.voice_features import load_audio

    paths = [r["path"] for r in read_rows(manifest)]
    encoder = WhisperBlockStates(None, range(5))  # the states analyze computes, for every block
    chunks = work / "whisper_blocks.chunks"
    chunks.mkdir(parents=True, exist_ok=True)
    made_for = chunks / "paths.json"
    if made_for.exists() and json.loads(made_for.read_text()) != paths:
        raise SystemExit(f"{chunks}: made for another manifest (remove it or use another --work)")
    made_for.write_text(json.dumps(paths))
    parts = []
    for start in range(0, len(paths), 256):
        f = chunks / f"{start:06d}.npy"
        if not f.exists():
            rows = []
            for p in paths[start: start + 256]:
                rows.append(np.stack([WhisperStates.pool(st) for st in encoder.states(load_audio(p))]))
            np.save(str(f) + ".tmp.npy", np.stack(rows))
            os.replace(str(f) + ".tmp.npy", f)
            print(f"{min(start + 256, len(paths))}/{len(paths)} clips", flush=True)
        parts.append(np.load(f))
    return np.concatenate(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--work", required=True, help="the --work folder of `mmva voice-fit` (acoustic.npz)")
    ap.add_argument("--blocks", default="0,1,2,3,4,12", help="rows: a block number, or digits averaged (12)")
    ap.add_argument("--dropout", type=float, default=0.7)
    args = ap.parse_args()
    import torch

    from mmva.labels import EMOTIONS
    from mmva.train.crossval import read_rows
    from mmva.train.voice_head import HeadSpec, cross_validate

    torch.set_num_threads(1)
    work = Path(args.work)
    rows = read_rows(args.manifest)
    tables = block_tables(args.manifest, work)
    acoustic = np.load(work / "acoustic.npz", allow_pickle=False)
    if list(acoustic["paths"]) != [r["path"] for r in rows]:
        raise SystemExit(f"{work / 'acoustic.npz'}: made for another manifest (run mmva voice-fit first)")
    y = np.array([EMOTIONS.index(r["emotion"]) for r in rows])
    for spec in args.blocks.split(","):
        x = np.concatenate([tables[:, [int(c) for c in spec]].mean(1), acoustic["x"]], axis=1)
        res = cross_validate(np.nan_to_num(x), y, [r["speaker"] for r in rows], [r["corpus"] for r in rows],
                             HeadSpec(normalization="speaker", dropout=args.dropout), group="corpus")
        s = res.summary()
        print(json.dumps({"blocks": spec, "uar_mean": round(s["uar_mean"], 4), "accuracy_mean": round(s["accuracy_mean"], 4),
                          "per_corpus_uar": {c: round(m["uar"], 4) for c, m in res.per_group.items()}}), flush=True)


if __name__ == "__main__":
    main()
