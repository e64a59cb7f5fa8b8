"""Self-contained HTML report: summary, an inline-SVG timeline plot and the utterance table.

No CDN, nothing fetched from elsewhere: styles, the player's small script and the face thumbnails
are inline, so the file opens offline and can be mailed around. With a ``video`` (a path relative to
the report, see :class:`mmva.analyze.writers.HTMLWriter`) a player sits above the timeline: clicking
an utterance or a point of the timeline seeks to it and the utterance playing is highlighted.
Geometry is computed here and the markup lives in ``templates/report.html.j2`` (Jinja2 autoescapes
the transcript text).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from mmva.analyze.timeline import SCHEMA_VERSION, Timeline, sentiment_score
from mmva.labels import EMOTIONS

COLORS = {
    "anger": "#d62728", "disgust": "#8c564b", "fear": "#9467bd", "joy": "#f2b705",
    "neutral": "#9e9e9e", "sadness": "#1f77b4", "surprise": "#17becf",
}
SENTIMENT_COLORS = {"negative": "#d62728", "neutral": "#9e9e9e", "positive": "#2ca02c"}

_W, _LEFT, _LANE, _TOP = 960, 80, 22, 10  # plot width, label gutter, lane height, top margin
_SENT_H = 90  # height of the sentiment strip


@lru_cache(maxsize=1)
def _template() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("mmva.analyze", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["clock"] = clock
    return env.get_template("report.html.j2")


def clock(seconds: float | None) -> str:
    """``75.25`` -> ``01:15.2`` (``h:mm:ss`` past an hour); ``-`` for None.

    >>> clock(75.25), clock(3725.0), clock(None)
    ('01:15.2', '1:02:05', '-')
    """
    if seconds is None:
        return "-"
    if seconds >= 3600:
        h, rem = divmod(int(seconds), 3600)
        return f"{h}:{rem // 60:02d}:{rem % 60:02d}"
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:04.1f}"


def _spans(timeline: Timeline) -> tuple[list[tuple[float, float]], float, str]:
    """x-extent of each utterance, the axis length and its unit (seconds, or utterance index)."""
    utts = timeline.utterances
    if utts and all(u.start_time is not None and u.end_time is not None for u in utts):
        end = max([timeline.duration or 0.0, *[u.end_time for u in utts]])  # type: ignore[list-item]
        return [(u.start_time, u.end_time) for u in utts], max(end, 1e-3), "s"  # type: ignore[misc]
    return [(i, i + 0.9) for i in range(len(utts))], max(len(utts), 1), "utterance"


def timeline_plot(timeline: Timeline) -> dict[str, Any]:
    """Rectangles (one lane per emotion) and a sentiment polyline, in SVG user units."""
    spans, length, unit = _spans(timeline)
    scale = (_W - _LEFT - 10) / length
    lanes_h = _LANE * len(EMOTIONS)
    rects, points = [], []
    for i, (u, (a, b)) in enumerate(zip(timeline.utterances, spans)):
        if not u.emotions:
            continue
        top = u.emotions[0]
        lane = EMOTIONS.index(top["label"])
        x, w = _LEFT + a * scale, max(2.0, (b - a) * scale)
        rects.append({"x": round(x, 1), "y": _TOP + lane * _LANE + 2, "w": round(w, 1), "h": _LANE - 4,
                      "i": i, "start": a, "color": COLORS[top["label"]],
                      "opacity": round(0.35 + 0.65 * float(top["confidence"]), 3),
                      "title": f"#{i} {clock(u.start_time) if unit == 's' else ''} {top['label']} "
                               f"{top['confidence']:.0%}: {u.text}"})
        score = sentiment_score(u)
        if score is not None:
            y = _TOP + lanes_h + 10 + (1 - score) / 2 * (_SENT_H - 20)
            points.append((round(_LEFT + (a + b) / 2 * scale, 1), round(y, 1)))
    ticks = []
    step = _nice_step(length)
    t = 0.0
    while t <= length + 1e-9:
        ticks.append({"x": round(_LEFT + t * scale, 1), "label": clock(t) if unit == "s" else str(int(t))})
        t += step
    return {
        "width": _W, "height": _TOP + lanes_h + _SENT_H + 24, "left": _LEFT, "lane": _LANE, "top": _TOP,
        "lanes": [{"label": e, "y": _TOP + i * _LANE, "color": COLORS[e]} for i, e in enumerate(EMOTIONS)],
        "rects": rects, "sentiment": " ".join(f"{x},{y}" for x, y in points),
        "sent_top": _TOP + lanes_h + 10, "sent_mid": _TOP + lanes_h + 10 + (_SENT_H - 20) / 2,
        "sent_bottom": _TOP + lanes_h + _SENT_H - 10, "axis_y": _TOP + lanes_h + _SENT_H + 4,
        "ticks": ticks, "unit": unit, "right": _W - 10, "scale": round(scale, 6),
    }


def speaker_plot(timeline: Timeline) -> dict[str, Any] | None:
    """One lane per speaker (in order of first appearance), each utterance a bar coloured by its
    top emotion; None when no utterance has a speaker (or there are no times)."""
    names = list(dict.fromkeys(u.speaker for u in timeline.utterances if u.speaker))
    spans, length, unit = _spans(timeline)
    if not names or unit != "s":
        return None
    scale = (_W - _LEFT - 10) / length
    rects = []
    for i, (u, (a, b)) in enumerate(zip(timeline.utterances, spans)):
        if not u.speaker:
            continue
        top = u.emotions[0] if u.emotions else None
        rects.append({"x": round(_LEFT + a * scale, 1), "y": _TOP + names.index(u.speaker) * _LANE + 2,
                      "w": round(max(2.0, (b - a) * scale), 1), "h": _LANE - 4, "i": i, "start": a,
                      "color": COLORS[top["label"]] if top else "#cccccc",
                      "opacity": round(0.35 + 0.65 * float(top["confidence"]), 3) if top else 0.5,
                      "title": f"#{i} {clock(u.start_time)} {u.speaker}"
                               + (f" · {top['label']} {top['confidence']:.0%}" if top else "") + f": {u.text}"})
    height = _TOP + _LANE * len(names)
    step = _nice_step(length)
    ticks = [{"x": round(_LEFT + k * step * scale, 1), "label": clock(k * step)}
             for k in range(int(length / step + 1e-9) + 1)]
    return {"width": _W, "height": height + 24, "left": _LEFT, "lane": _LANE, "top": _TOP, "right": _W - 10,
            "lanes": [{"label": n, "y": _TOP + i * _LANE} for i, n in enumerate(names)],
            "rects": rects, "ticks": ticks, "axis_y": height + 4, "scale": round(scale, 6)}


def _nice_step(length: float, target: int = 10) -> float:
    raw = length / target
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if step >= raw:
            return float(step)
    return float(3600 * round(raw / 3600 + 0.5))


def render_html(timeline: Timeline, video: str | None = None) -> str:
    """The report as one HTML string; ``video`` (a URL: a path relative to the report, a ``data:``
    or ``blob:`` URL) puts a player above the timeline. Without one the player stays hidden until a
    page embedding the report calls ``mmvaReport.setVideo(url)`` (the ``mmva serve`` page does).

    >>> from mmva.types import Utterance
    >>> utts = [Utterance(text="<b>", start_time=0, end_time=1)]
    >>> html = render_html(Timeline(source="a.mp4", duration=2.0, utterances=utts))
    >>> "<svg" in html and "&lt;b&gt;" in html and "http" not in html.split("<body")[1]
    True
    >>> 'src="talk%20one.mp4"' in render_html(Timeline(source="a.mp4", utterances=utts), video="talk%20one.mp4")
    True
    """
    summary = timeline.summary
    share = [{"label": e, "value": summary["emotion_share"].get(e, 0.0), "color": COLORS[e]} for e in EMOTIONS]
    x = 0.0
    for s in share:  # stacked bar geometry, percent of the bar
        s["x"], x = round(x * 100, 2), x + s["value"]
        s["w"] = round(s["value"] * 100, 2)
    return _template().render(t=timeline, summary=summary, plot=timeline_plot(timeline), share=share,
                              speakers=speaker_plot(timeline), video=video,
                              faces=any(u.extra.get("face_crop") for u in timeline.utterances),
                              colors=COLORS, sentiment_colors=SENTIMENT_COLORS, emotions=EMOTIONS,
                              schema=SCHEMA_VERSION)
