"""Charts as inline SVG, drawn on the server: the portal has no JavaScript.

Only SVG presentation attributes and the stylesheet's classes are used (the portal's
Content-Security-Policy allows no inline style). Each bar carries a <title>, which a
browser shows on hover, and each chart an aria-label. Labels are escaped here: the
result is Markup, inserted into the templates as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from markupsafe import Markup

Fmt = Callable[[int], str]


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def count(n: int) -> str:
    return f"{n:,}"


def _nice_max(top: int, binary: bool = False) -> int:
    """The axis top: 1, 2 or 5 times a power of ten; for bytes, of the KiB/MiB/GiB unit
    the top is shown in (so the axis reads 500 KiB, not 488.3 KiB)."""
    if top <= 0:
        return 1
    unit = 1
    while binary and unit * 1024 <= top:
        unit *= 1024
    value = top / unit
    step = 1.0
    while step * 10 <= value:
        step *= 10
    nice = next((m * step for m in (1, 2, 5, 10) if m * step >= value), 10 * step)
    return max(1, int(nice * unit))


def columns(
    points: Sequence[tuple[str, int]],
    label: str,
    fmt: Fmt = count,
    *,
    width: int = 720,
    height: int = 180,
    css: str = "bars",
) -> Markup:
    """A bar per point (a day), the value axis from 0 to a round top, the first, middle and
    last labels under the bars. An empty series draws the axes and says "no data"."""
    left, bottom, top_pad = 64, 22, 10
    plot_w, plot_h = width - left - 8, height - bottom - top_pad
    top = _nice_max(max((v for _, v in points), default=0), binary=fmt is size)
    parts = [
        f'<svg class="chart {css}" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}"'
        f' width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(label)}</title>",
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top_pad + plot_h * (1 - frac)
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{width - 8}" y2="{y:.1f}"/>')
        if frac == 0.5 and (top * frac) % 1:
            continue  # half of 1 pull is no label
        parts.append(
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(int(top * frac)))}</text>'
        )
    if not points or not any(v for _, v in points):
        parts.append(
            f'<text class="empty" x="{left + plot_w / 2:.1f}" y="{top_pad + plot_h / 2:.1f}"'
            ' text-anchor="middle">no data</text>'
        )
    n = max(1, len(points))
    slot = plot_w / n
    bar = max(1.0, slot * 0.8)
    for i, (name, value) in enumerate(points):
        h = plot_h * value / top
        x = left + i * slot + (slot - bar) / 2
        y = top_pad + plot_h - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{max(h, 0):.1f}">'
            f"<title>{escape(name)}: {escape(fmt(value))}</title></rect>"
        )
    for i in sorted({0, (len(points) - 1) // 2, len(points) - 1}) if points else ():
        x = left + i * slot + slot / 2
        parts.append(
            f'<text class="axis" x="{x:.1f}" y="{height - 6}" text-anchor="middle">{escape(points[i][0])}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every label and value above is escaped


def ranking(
    items: Sequence[tuple[str, int, str | None]],
    label: str,
    fmt: Fmt = size,
    *,
    width: int = 460,
    row: int = 24,
) -> Markup:
    """Horizontal bars, largest first: (label, value, link or None). A linked row is an SVG
    <a>, which works without script."""
    label_w, value_w = 170, 72
    plot_w = width - label_w - value_w
    height = max(row, row * len(items)) + 4
    top = max((v for _, v, _ in items), default=0) or 1
    parts = [
        f'<svg class="chart ranking" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}"'
        f' width="100%" preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(label)}</title>",
    ]
    if not items:
        parts.append(f'<text class="empty" x="{width / 2:.1f}" y="{row - 6}" text-anchor="middle">no data</text>')
    for i, (name, value, href) in enumerate(items):
        y = 2 + i * row
        shown = name if len(name) <= 26 else name[:25] + "…"
        text = f'<text class="label" x="{label_w - 8}" y="{y + row - 8}" text-anchor="end">{escape(shown)}</text>'
        if href:
            text = f'<a href="{escape(href)}">{text}</a>'
        w = max(1.0, plot_w * value / top)
        parts.append(text)
        parts.append(
            f'<rect class="bar" x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}">'
            f"<title>{escape(name)}: {escape(fmt(value))}</title></rect>"
        )
        parts.append(f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + row - 8}">{escape(fmt(value))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every label and value above is escaped


def gauge(fraction: float | None, label: str, *, width: int = 320, height: int = 44) -> Markup:
    """A filled bar for a share (a cache hit ratio, a threshold used); None: "no data"."""
    inner = width - 4
    parts = [
        f'<svg class="chart gauge" role="img" aria-label="{escape(label)}" viewBox="0 0 {width} {height}"'
        f' width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(label)}</title>",
        f'<rect class="track" x="2" y="2" width="{inner}" height="{height - 20}" rx="4"/>',
    ]
    if fraction is None:
        parts.append(f'<text class="empty" x="{width / 2:.1f}" y="{height - 26}" text-anchor="middle">no data</text>')
    else:
        shown = min(max(fraction, 0.0), 1.0)
        over = " over" if fraction >= 1.0 else ""
        bar_w = inner * shown
        parts.append(f'<rect class="fill{over}" x="2" y="2" width="{bar_w:.1f}" height="{height - 20}" rx="4"/>')
        parts.append(f'<text class="axis" x="2" y="{height - 4}">{fraction * 100:.1f}%</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every label above is escaped
