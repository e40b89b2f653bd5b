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


METHOD_COLORS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777")


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks from lo to hi (both > 0) for a logarithmic axis."""
    ticks = []
    for exp in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for step in (1, 2, 5):
            value = step * 10.0 ** exp
            if lo <= value * 1.0001 and value <= hi * 1.0001:
                ticks.append(value)
    return ticks


def held_out_chart(
    points: list[dict[str, Any]], sparsities: list[float], *, title: str, width: int = 560, height: int = 280
) -> Markup:
    """The held-out summary (geometric mean of pruned / dense perplexity over the held-out sets; dense is 1) against
    the achieved sparsity, one line per method, on a logarithmic axis. `points`: {method, target, sparsity, ratio};
    `sparsities`: the sweep's targets, marked on the x axis."""
    methods = list(dict.fromkeys(p["method"] for p in points))
    colors = {m: METHOD_COLORS[i % len(METHOD_COLORS)] for i, m in enumerate(methods)}
    ratios = [p["ratio"] for p in points]
    lo, hi = min([1.0, *ratios]), max([2.0, *ratios])
    lo, hi = 10 ** (math.floor(math.log10(lo) * 4) / 4), 10 ** (math.ceil(math.log10(hi) * 4) / 4)
    xs = [p["sparsity"] for p in points] + list(sparsities)
    x_lo, x_hi = max(0.0, min(xs, default=0.0) - 0.05), min(1.0, max(xs, default=1.0) + 0.05)
    left, right, top_pad, bottom = 56, 16, 34, 58
    plot_w, plot_h = width - left - right, height - top_pad - bottom

    def x(value: float) -> float:
        return left + plot_w * (value - x_lo) / max(x_hi - x_lo, 1e-9)

    def y(value: float) -> float:
        return top_pad + plot_h - plot_h * (math.log10(value) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))

    parts = _open(title, "chart-held-out", width, height, left)
    for value in _log_ticks(lo, hi):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                     'stroke="#e5e7eb"/>')
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" fill="#4b5563">'
                     f"×{_fmt(value)}</text>")
    parts.append(f'<line class="dense" x1="{left}" x2="{width - right}" y1="{y(1.0):.1f}" y2="{y(1.0):.1f}" '
                 'stroke="#6b7280" stroke-dasharray="4 3"/>')
    for target in sorted(set(sparsities)):
        parts.append(f'<text x="{x(target):.1f}" y="{top_pad + plot_h + 15}" text-anchor="middle" fill="#4b5563">'
                     f"{target * 100:g}%</text>")
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{top_pad + plot_h + 30}" text-anchor="middle" '
                 'fill="#4b5563">achieved sparsity of block parameters</text>')
    parts.append(f'<text x="12" y="{top_pad + plot_h / 2:.1f}" transform="rotate(-90 12 {top_pad + plot_h / 2:.1f})" '
                 'text-anchor="middle" fill="#4b5563">held-out × (log)</text>')
    for method in methods:
        own = sorted((p for p in points if p["method"] == method), key=lambda p: p["sparsity"])
        if len(own) > 1:
            line = " ".join(f"{x(p['sparsity']):.1f},{y(p['ratio']):.1f}" for p in own)
            parts.append(f'<polyline class="method-line" data-method="{escape(method)}" points="{line}" fill="none" '
                         f'stroke="{colors[method]}" stroke-width="2"/>')
        for p in own:
            parts.append(
                f'<circle class="point" cx="{x(p["sparsity"]):.1f}" cy="{y(p["ratio"]):.1f}" r="4" '
                f'fill="{colors[method]}" data-method="{escape(method)}" data-target="{p["target"]:g}" '
                f'data-sparsity="{p["sparsity"]}" data-ratio="{p["ratio"]}"><title>{escape(method)} at '
                f'{p["target"]:g}: ×{_fmt(p["ratio"])} (achieved {p["sparsity"]:.3f})</title></circle>'
            )
    lx = left
    for name in [*methods, "dense"]:  # legend
        color = colors.get(name, "#6b7280")
        parts.append(f'<rect x="{lx}" y="{height - 16}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{lx + 14}" y="{height - 7}" fill="#111827">{escape(name)}</text>')
        lx += 24 + 7 * len(name)
    parts.append("</svg>")
    return Markup("".join(parts))
