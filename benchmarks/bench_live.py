"""Benchmark live analysis (``WS /stream``): delay per utterance, CPU per stream, streams held in real time.

    nice python benchmarks/bench_live.py                     # 1, 2 and 3 concurrent streams
    python benchmarks/bench_live.py --streams 1 2 3 4 --sentences 8

A real ``mmva serve`` process (as tests/serve_server.py starts it) receives, from each of N client
threads at once, a generated talk (espeak-ng sentences with 1 s pauses) as 100 ms PCM chunks sent in
real time, and answers over the WebSocket. Written to benchmarks/results/live.json:

- ``delay``: wall seconds from the moment the last audio of an utterance was sent to the moment its
  message arrived (client side; includes the 0.6 s pause that closes an utterance), median and p95;
  ``server_delay`` the same measured by the server (from the arrival of that audio);
- ``cpu_per_stream``: the server process's CPU seconds per second of audio per stream (1.0 = one core);
- ``realtime``: whether every stream's last utterance arrived within ``--max-lag`` seconds of the end
  of its audio: the number of streams this machine holds live.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import end_load, machine_info  # noqa: E402

SENTENCES = ["I am so happy to see you today.", "This is terrible news, I hate it.",
             "I am scared of what will happen next.", "Thank you so much, that was wonderful.",
             "I cannot believe you did that to me.", "We will meet again tomorrow at noon.",
             "Oh no, I lost my keys again.", "What a lovely surprise this is!"]


def talk(n: int) -> tuple[np.ndarray, list[float]]:
    from tests.media import silence, speak

    parts, ends, t = [silence(0.5)], [], 0.5
    for s in (SENTENCES * 2)[:n]:
        clip = speak(s)
        parts += [clip, silence(1.0)]
        t += len(clip) / 16000
        ends.append(t)
        t += 1.0
    return np.concatenate(parts), ends


def stream(url: str, key: str, audio: np.ndarray, out: dict) -> None:
    from websockets.sync.client import connect

    pcm = (audio * 32767).astype("<i2").tobytes()
    got, sent_at = [], {}
    with connect(url, additional_headers={"X-API-Key": key}, open_timeout=60) as ws:
        ws.send(json.dumps({"type": "start"}))
        json.loads(ws.recv(timeout=120))
        start = time.monotonic()

        def receive() -> None:
            for raw in ws:
                msg = json.loads(raw)
                msg["_at"] = time.monotonic() - start
                got.append(msg)

        reader = threading.Thread(target=receive, daemon=True)
        reader.start()
        step = 3200
        for i in range(0, len(pcm), step):
            t = i / 2 / 16000
            time.sleep(max(0.0, start + t - time.monotonic()))
            ws.send(pcm[i:i + step])
            sent_at[round((i + step) / 2 / 16000, 1)] = time.monotonic() - start
        out["audio_end_at"] = time.monotonic() - start
        ws.send(json.dumps({"type": "stop"}))
        reader.join(timeout=300)
    out["messages"] = got
    out["sent_at"] = sent_at


def level(server, n: int, audio: np.ndarray, max_lag: float) -> dict:
    import psutil

    proc = psutil.Process(server.pid)
    cpu0 = sum(proc.cpu_times()[:2])
    outs = [{} for _ in range(n)]
    url = server.url.replace("http://", "ws://") + "/stream"
    from tests.serve_server import SERVE_KEY

    threads = [threading.Thread(target=stream, args=(url, SERVE_KEY, audio, o)) for o in outs]
    t0 = time.monotonic()
    for th in threads:
        th.start()
        time.sleep(0.05)
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    seconds = len(audio) / 16000
    delays, server_delays, lags, counts = [], [], [], []
    for o in outs:
        utts = [m for m in o["messages"] if m["type"] == "utterance"]
        counts.append(len(utts))
        for m in utts:
            end = m["utterance"]["end_time"]
            sent = o["sent_at"].get(round(np.ceil(end * 10) / 10, 1))
            if sent is not None:
                delays.append(m["_at"] - sent)
            if m["delay"] is not None:
                server_delays.append(m["delay"])
        last = max((m["_at"] for m in utts), default=o["audio_end_at"])
        lags.append(last - o["audio_end_at"])

    def pct(xs: list[float], q: float) -> float | None:
        return round(float(np.percentile(xs, q)), 3) if xs else None

    return {"streams": n, "audio_s": round(seconds, 2), "wall_s": round(wall, 2), "utterances": counts,
            "delay_p50_s": pct(delays, 50), "delay_p95_s": pct(delays, 95), "delay_max_s": pct(delays, 100),
            "server_delay_p50_s": pct(server_delays, 50), "server_delay_p95_s": pct(server_delays, 95),
            "last_utterance_after_audio_end_s": [round(x, 2) for x in lags],
            "cpu_s": round(cpu, 2), "cpu_per_stream": round(cpu / seconds / n, 3),
            "realtime": max(lags) <= max_lag}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--max-lag", type=float, default=5.0, help="seconds; beyond it a level is not real time")
    parser.add_argument("--out", default=str(HERE / "results" / "live.json"))
    args = parser.parse_args()
    import tempfile

    from tests.serve_server import SERVE_KEY, ServerProcess

    info = machine_info("cpu")
    audio, _ = talk(args.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "work", "--api-key", SERVE_KEY, "--live-sessions",
                               str(max(args.streams))).start()
        try:
            level(server, 1, audio[: 16000 * 3], args.max_lag)  # warm-up: loads the heads
            results = []
            for n in args.streams:
                results.append(level(server, n, audio, args.max_lag))
                print(json.dumps(results[-1]), flush=True)
        finally:
            server.stop()
    held = max((r["streams"] for r in results if r["realtime"]), default=0)
    report = {"what": f"WS /stream: {args.sentences} espeak-ng sentences with 1 s pauses ({len(audio) / 16000:.1f} s), "
                      "100 ms PCM chunks sent in real time by each of N concurrent clients",
              "machine": end_load(info), "levels": results, "streams_held_in_real_time": held,
              "max_lag_s": args.max_lag}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"streams held in real time: {held}; written to {args.out}")


if __name__ == "__main__":
    main()
