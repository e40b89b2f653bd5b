"""Small bar charts as inline SVG, rendered on the server (no script, no external assets)."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from markupsafe import Markup

from twossp_core.report_table import dataset_title

SERIES_COLORS = {"dense": "#6b7280", "pruned": "#2563eb", "healed": "#16a34a"}
FALLBACK_COLORS = ("#9333ea", "#ea580c", "#0891b2")


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}" if value < 1 else f"{value:.2f}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _open(title: str, css_class: str, width: int, height: int, left: int) -> list[str]:
    return [
        f'<svg class="chart {escape(css_class)}" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} '
        f'{height}" width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" '
        f'font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="16" font-size="13" font-weight="bold" fill="#111827">{escape(title)}</text>',
    ]


def _y_grid(top: float, left: int, right_x: int, y_of: Any) -> list[str]:
    """Five gridlines from 0 to `top` with their labels; y_of maps a value to its y coordinate."""
    parts = []
    for i in range(5):
        value = top * i / 4
        y = y_of(value)
        parts.append(f'<line x1="{left}" x2="{right_x}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#4b5563">{_fmt(value)}</text>')
    return parts


def grouped_bars(
    groups: list[tuple[str, dict[str, float | None]]], *, title: str, unit: str, css_class: str, width: int = 520
) -> Markup:
    """One group of bars per category (e.g. a dataset), one bar per series (dense, pruned, healed)."""
    series = [s for s in SERIES_COLORS if any(v.get(s) is not None for _, v in groups)]
    series += sorted({s for _, v in groups for s in v if s not in SERIES_COLORS and v[s] is not None})
    colors = {s: SERIES_COLORS.get(s, FALLBACK_COLORS[i % len(FALLBACK_COLORS)]) for i, s in enumerate(series)}
    values = [v for _, vals in groups for v in vals.values() if v is not None and math.isfinite(v)]
    top = _nice_max(max(values, default=1.0))
    left, right, top_pad, bottom = 56, 12, 34, 46
    height = 240
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    group_w = plot_w / max(len(groups), 1)
    bar_w = min(48.0, (group_w - 16) / max(len(series), 1))
    parts = _open(title, css_class, width, height, left)
    parts += _y_grid(top, left, width - right, lambda v: top_pad + plot_h - plot_h * v / top)
    parts.append(
        f'<text x="12" y="{top_pad + plot_h / 2:.1f}" transform="rotate(-90 12 {top_pad + plot_h / 2:.1f})" '
        f'text-anchor="middle" fill="#4b5563">{escape(unit)}</text>'
    )
    for g, (label, vals) in enumerate(groups):
        x0 = left + g * group_w + (group_w - bar_w * len(series)) / 2
        for s, name in enumerate(series):
            value = vals.get(name)
            if value is None or not math.isfinite(value):
                continue
            h = plot_h * min(value / top, 1.0)
            x, y = x0 + s * bar_w, top_pad + plot_h - h
            parts.append(
                f'<rect class="bar bar-{escape(name)}" x="{x + 2:.1f}" y="{y:.1f}" width="{bar_w - 4:.1f}" '
                f'height="{h:.1f}" fill="{colors[name]}" data-value="{value}"><title>{escape(label)} {escape(name)}: '
                f"{_fmt(value)}</title></rect>"
            )
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{y - 3:.1f}" text-anchor="middle" fill="#111827">'
                f"{_fmt(value)}</text>"
            )
        short = label if len(label) <= 40 else "…" + label[-39:]
        parts.append(
            f'<text x="{left + g * group_w + group_w / 2:.1f}" y="{top_pad + plot_h + 16}" text-anchor="middle" '
            f'fill="#111827">{escape(short)}</text>'
        )
    lx = left
    for name in series:  # legend
        parts.append(f'<rect x="{lx}" y="{height - 16}" width="10" height="10" fill="{colors[name]}"/>')
        parts.append(f'<text x="{lx + 14}" y="{height - 7}" fill="#111827">{escape(name)}</text>')
        lx += 24 + 7 * len(name)
    parts.append("</svg>")
    return Markup("".join(parts))


def perplexity_chart(report: dict[str, Any]) -> Markup | None:
    """Perplexity per evaluation dataset: dense → pruned (→ healed when the report has it)."""
    rows = report.get("perplexity") or []
    groups = [
        (str(r.get("dataset", "?")), {k: r.get(k) for k in ("dense", "pruned", "healed") if r.get(k) is not None})
        for r in rows
    ]
    if not any(vals for _, vals in groups):
        return None
    return grouped_bars(groups, title="Perplexity (lower is better)", unit="perplexity", css_class="chart-perplexity")


def throughput_chart(report: dict[str, Any]) -> Markup | None:
    tp = report.get("throughput_tokens_per_s") or {}
    vals = {k: tp.get(k) for k in ("dense", "pruned", "healed") if tp.get(k) is not None}
    if not vals:
        return None
    return grouped_bars(
        [("forward pass", vals)], title="Throughput (higher is better)", unit="tokens/s", css_class="chart-throughput"
    )


def sweep_perplexity_charts(report: dict[str, Any]) -> list[Markup]:
    """One chart per evaluation dataset: each run of the sweep against the dense model (and healed when present)."""
    dense = {d["dataset"]: d["perplexity"] for d in (report.get("dense") or {}).get("perplexity", [])}
    out = []
    for dataset, dense_ppl in dense.items():
        groups: list[tuple[str, dict[str, float | None]]] = []
        for row in report.get("rows") or []:
            entry = next((p for p in row.get("perplexity") or [] if p.get("dataset") == dataset), None)
            if entry is None:
                continue
            vals = {"dense": dense_ppl, "pruned": entry.get("pruned"), "healed": entry.get("healed")}
            groups.append((f"{row['method']} {row['sparsity_target']:g}", vals))
        if groups:
            name = dataset_title(dataset, report.get("dense") or {}).rsplit("/", 1)[-1]
            out.append(grouped_bars(
                groups, title=f"Perplexity on {name} (lower is better)", unit="perplexity",
                css_class="chart-perplexity", width=max(520, 110 * len(groups) + 80),
            ))
    return out


def loss_curve_chart(heal: dict[str, Any], width: int = 520, height: int = 240) -> Markup | None:
    """The heal's training loss by step (the report's heal.loss_curve), as a line."""
    points = [(float(s), float(v)) for s, v in heal.get("loss_curve") or [] if math.isfinite(float(v))]
    if len(points) < 2:
        return None
    left, right, top_pad, bottom = 56, 16, 34, 40
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    x_lo, x_hi = points[0][0], points[-1][0]
    y_hi = _nice_max(max(v for _, v in points))

    def x(step: float) -> float:
        return left + plot_w * (step - x_lo) / max(x_hi - x_lo, 1.0)

    def y(value: float) -> float:
        return top_pad + plot_h - plot_h * min(value / y_hi, 1.0)

    title = f"Heal loss ({heal.get('method', '?')}, {heal.get('params', '?')})"
    parts = _open(title, "chart-heal-loss", width, height, left) + _y_grid(y_hi, left, width - right, y)
    for step, anchor in ((x_lo, "start"), (x_hi, "end")):  # inside the plot's width: not cut at the edges
        parts.append(f'<text x="{x(step):.1f}" y="{top_pad + plot_h + 16}" text-anchor="{anchor}" fill="#4b5563">'
                     f"step {int(step)}</text>")
    line = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
    parts.append(f'<polyline class="loss" points="{line}" fill="none" stroke="#16a34a" stroke-width="2"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
