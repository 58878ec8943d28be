"""Small inline SVG charts for the HTML report: no JavaScript, no library, every text escaped.

Each function returns one `<svg>` element as a string; a chart with nothing to show still draws a
frame and says so, so a reader (and the browser test) can tell "empty" from "broken".
"""

from __future__ import annotations

import math
from html import escape
from statistics import median
from typing import Any

PALETTE = ("#3b6fd4", "#e08a1e", "#3a9d5d", "#c7443f", "#8a63c9", "#6b7480", "#1aa3a3", "#b8860b")
FONT = 12
LABEL_WIDTH = 200


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'preserveAspectRatio="xMinYMin meet" style="max-width:{width}px" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>' + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, anchor: str = "start", size: int = FONT, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{klass}>'
            f"{escape(text)}</text>")


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def ticks(peak: float, count: int = 4) -> list[float]:
    """Round axis ticks from 0 past `peak`: a step of 1, 2 or 5 times a power of ten, about `count` of them
    (the last is the axis's top)."""
    if peak <= 0:
        return [0, 1]
    rough = peak / count
    power = 10 ** math.floor(math.log10(rough))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    return [step * i for i in range(math.ceil(peak / step - 1e-9) + 1)]


def _y_axis(values: list[float], left: int, right: float, y: Any) -> list[str]:
    """Tick labels and light grid lines at `values`; `y` maps a value to its height on the page."""
    return [part for v in values for part in (
        f'<line x1="{left}" y1="{y(v):.1f}" x2="{right:.1f}" y2="{y(v):.1f}" stroke="#e3e6ec"/>',
        _text(left - 6, y(v) + 4, _fmt(v), "end", 11))]


def empty(title: str, message: str = "nothing to show", width: int = 640) -> str:
    return _svg(width, 60, [f'<rect x="0.5" y="0.5" width="{width - 1}" height="59" fill="none" stroke="#ccd"/>',
                            _text(width / 2, 35, message, "middle", cls="muted")], title)


def legend(series: list[tuple[str, str]], x: float, y: float) -> list[str]:
    out = []
    for name, color in series:
        out += [f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{color}"/>',
                _text(x + 16, y, name)]
        x += 24 + 7.2 * len(name)
    return out


def hbars(title: str, labels: list[str], series: list[tuple[str, list[float], str]], width: int = 640,
          bar: int = 14, fmt=_fmt, label_width: int = LABEL_WIDTH, two_lines: str = "") -> str:
    """Horizontal bars: one row per label, one bar per series (grouped). With `two_lines` (a separator), a
    label is drawn as two lines, its text up to the separator and the rest, each cut to fit; a label's
    whole text is its tooltip."""
    if not labels or not any(any(v for v in values) for _, values, _ in series):
        return empty(title)
    top = 24 if len(series) > 1 else 6
    row = max(bar * len(series) + 8, 32 if two_lines else 0)
    height = top + row * len(labels) + 6
    peak = max(max(values) for _, values, _ in series) or 1
    span = width - label_width - 60
    fits = int(label_width / 6.6)  # characters of a 12px label in its room
    body = legend([(name, color) for name, _, color in series], label_width, 14) if len(series) > 1 else []
    for i, label in enumerate(labels):
        y0 = top + i * row
        first, _, rest = label.partition(two_lines) if two_lines else (label, "", "")
        lines = [first, rest] if rest else [first]
        texts = "".join(_text(label_width - 6, y0 + row / 2 + 3 + 14 * (k - (len(lines) - 1) / 2), _short(line, fits),
                              "end") for k, line in enumerate(lines))
        body.append(f"<g><title>{escape(label)}</title>{texts}</g>")
        for k, (name, values, color) in enumerate(series):
            value = values[i]
            w = span * value / peak
            y = y0 + (row - bar * len(series)) / 2 - 2 + k * bar if two_lines else y0 + k * bar
            body.append(f'<rect x="{label_width}" y="{y:.1f}" width="{max(w, 0.5):.1f}" height="{bar - 2}" '
                        f'fill="{color}"><title>{escape(f"{label} · {name}: {fmt(value)}")}</title></rect>')
            body.append(_text(label_width + w + 4, y + bar - 4, fmt(value), size=11))
    return _svg(width, height, body, title)


def vbars(title: str, categories: list[str], series: list[tuple[str, list[float], str]], width: int = 640,
          height: int = 220, stacked: bool = True, markers: list[tuple[float, str]] | None = None,
          x_label: str = "", y_label: str = "", tick_every: int | None = None, values: bool = False) -> str:
    """Vertical bars per category, stacked (or side by side); `markers` are (category position, label)
    dashed vertical lines, positions in category units (0 = the first category's center); `values`
    writes each category's total above its bar."""
    if not categories or not any(any(v for v in values) for _, values, _ in series):
        return empty(title)
    left, right, top, bottom = 44, 12, 26, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for _, values, _ in series) if stacked else max(values[i] for _, values, _ in series)
              for i in range(len(categories))]
    axis = ticks(max(totals))
    peak = axis[-1]
    slot = plot_w / len(categories)
    body = [*_y_axis(axis, left, width - right, lambda v: top + plot_h - plot_h * v / peak),
            f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#889"/>']
    if len(series) > 1:
        body += legend([(name, color) for name, _, color in series], left, 14)
    bar_w = slot * 0.7 / (1 if stacked else len(series))
    every = tick_every or max(1, round(len(categories) / 16))
    for i, category in enumerate(categories):
        x0 = left + i * slot + slot * 0.15
        base = 0.0
        for k, (name, values, color) in enumerate(series):
            value = values[i]
            if not value:
                continue
            h = plot_h * value / peak
            x = x0 if stacked else x0 + k * bar_w
            y = top + plot_h - (base if stacked else 0) - h
            body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{color}">'
                        f'<title>{escape(f"{category} · {name}: {_fmt(value)}")}</title></rect>')
            if stacked:
                base += h
        if values and totals[i]:
            body.append(_text(left + (i + 0.5) * slot, top + plot_h - plot_h * totals[i] / peak - 3,
                              _fmt(totals[i]), "middle", 11))
        if i % every == 0:
            body.append(_text(left + (i + 0.5) * slot, top + plot_h + 14, _short(category, 10), "middle", 11))
    for position, label in markers or []:
        x = left + (position + 0.5) * slot
        body += [f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#c7443f" '
                 f'stroke-dasharray="4 3" class="marker"/>', _text(x + 3, top + 6, label, size=11, cls="marker")]
    if x_label:
        body.append(_text(left + plot_w / 2, height - 4, x_label, "middle", 11, "muted"))
    if y_label:
        body.append(_text(4, top - 10, y_label, size=11, cls="muted"))
    return _svg(width, height, body, title)


def histogram(title: str, values: list[float], lo: float, hi: float, bins: int,
              markers: list[tuple[float, str]] | None = None, color: str = PALETTE[0], x_label: str = "") -> str:
    """A histogram of values on [lo, hi] with `bins` equal bins; markers at values (dashed lines)."""
    if not values:
        return empty(title)
    if hi <= lo:
        hi = lo + 1
    step = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - lo) / step)))] += 1
    labels = [_fmt(lo + (i + 0.5) * step) for i in range(bins)]
    marks = [((m - lo) / step - 0.5, label) for m, label in markers or []]
    return vbars(title, labels, [("count", counts, color)], markers=marks, x_label=x_label, y_label="count",
                 tick_every=2 * max(1, round(bins / 40)))


def _quantiles(values: list[float]) -> tuple[float, float, float, float, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        pos = q * (len(ordered) - 1)
        i = int(pos)
        return ordered[i] if i + 1 >= len(ordered) else ordered[i] + (ordered[i + 1] - ordered[i]) * (pos - i)

    return ordered[0], at(0.25), median(ordered), at(0.75), ordered[-1]


def boxplots(title: str, groups: list[str], series: list[tuple[str, list[list[float]], str]], width: int = 640,
             height: int = 240, y_label: str = "") -> str:
    """Box plots (min, quartiles, median, max) per group, one box per series side by side."""
    if not groups or not any(any(vals) for _, per_group, _ in series for vals in per_group):
        return empty(title)
    left, right, top, bottom = 44, 12, 26, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    axis = ticks(max(max(vals) for _, per_group, _ in series for vals in per_group if vals))
    peak = axis[-1]
    slot = plot_w / len(groups)
    box_w = slot * 0.6 / len(series)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / peak

    body = [*_y_axis(axis, left, width - right, y),
            f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#889"/>']
    body += legend([(name, color) for name, _, color in series], left + (7.2 * len(y_label) + 12 if y_label else 0), 14)
    for i, group in enumerate(groups):
        for k, (name, per_group, color) in enumerate(series):
            vals = per_group[i]
            if not vals:
                continue
            lo, q1, mid, q3, hi = _quantiles(vals)
            x = left + i * slot + slot * 0.2 + k * box_w
            cx = x + box_w / 2
            tip = escape(f"{group} · {name}: n {len(vals)}, min {_fmt(lo)}, median {_fmt(mid)}, max {_fmt(hi)}")
            body.append(f'<g><title>{tip}</title>'
                        f'<line x1="{cx:.1f}" y1="{y(hi):.1f}" x2="{cx:.1f}" y2="{y(lo):.1f}" stroke="{color}"/>'
                        f'<rect x="{x:.1f}" y="{y(q3):.1f}" width="{box_w * 0.9:.1f}" '
                        f'height="{max(1.0, y(q1) - y(q3)):.1f}" fill="{color}" fill-opacity="0.35" stroke="{color}"/>'
                        f'<line x1="{x:.1f}" y1="{y(mid):.1f}" x2="{x + box_w * 0.9:.1f}" y2="{y(mid):.1f}" '
                        f'stroke="{color}" stroke-width="2"/></g>')
        body.append(_text(left + (i + 0.5) * slot, top + plot_h + 14, _short(group, 12), "middle", 11))
    if y_label:
        body.append(_text(4, top - 10, y_label, size=11, cls="muted"))
    return _svg(width, height, body, title)
