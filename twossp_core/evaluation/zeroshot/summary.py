"""The report's `zero_shot` block as text lines (the CLI's summary; torch-free)."""

from __future__ import annotations

from typing import Any

ORDER = ("dense", "pruned", "healed")
APPROXIMATE_MARK = "*"


def accuracy_text(scores: dict[str, Any] | None, metric: str, plus_minus: str = " ±", missing: str = "—") -> str:
    """A model's `metric` ± its standard error, and for a pruned or healed model its paired difference from the
    dense model on the same items, "(Δ -0.0850 ±0.0240)"; `missing` when it was not scored."""
    scores = scores or {}
    value, err = scores.get(metric), scores.get(f"{metric}_stderr")
    if value is None:
        return missing
    text = f"{value:.4f}" + (f"{plus_minus}{err:.4f}" if err is not None else "")
    delta, delta_err = scores.get(f"{metric}_delta"), scores.get(f"{metric}_delta_stderr")
    if delta is not None:
        text += f" (Δ {delta:+.4f}" + (f"{plus_minus}{delta_err:.4f}" if delta_err is not None else "") + ")"
    return text


def _cell(scores: dict[str, Any], metric: str) -> str:
    return accuracy_text(scores, metric)


def labels(block: dict[str, Any]) -> list[str]:
    first = next(iter(block["tasks"].values()), {})
    return [label for label in ORDER if label in first]


def task_title(name: str, entry: dict[str, Any]) -> str:
    return name + (APPROXIMATE_MARK if entry.get("approximate") else "")


def summary_lines(block: dict[str, Any]) -> list[str]:
    """One line per task and metric (acc, acc_norm): each model's accuracy ± its standard error (a pruned or healed
    model's also with its paired difference from the dense model, Δ ± standard error), then the average acc; an
    approximate task is starred and the note says why."""
    names = labels(block)
    lines = [f"zero-shot accuracy ({' -> '.join(names)}; {block['subset']}; ± standard error; Δ: paired difference "
             "from dense):"]
    width = max((len(task_title(n, e)) for n, e in block["tasks"].items()), default=8) + len(" acc_norm")
    for name, entry in block["tasks"].items():
        for metric in entry["metrics"]:
            title = f"{task_title(name, entry)} {metric}"
            cells = " -> ".join(_cell(entry[label], metric) for label in names)
            lines.append(f"  {title:<{width}}  {cells}   (n {entry['n']})")
    average = block.get("average_acc") or {}
    if len(block["tasks"]) > 1 and average:
        mark = APPROXIMATE_MARK if block.get("approximate") else ""
        lines.append(f"  {'average acc' + mark:<{width}}  " + " -> ".join(f"{average[label]:.4f}" for label in names))
    notes = {e["note"] for e in block["tasks"].values() if e.get("approximate") and e.get("note")}
    lines += [f"  {APPROXIMATE_MARK} approximate: {note}" for note in sorted(notes)]
    return lines


def _acc(block: dict[str, Any] | None, task: str, label: str) -> float | None:
    if not block:
        return None
    return ((block["tasks"].get(task) or {}).get(label) or {}).get("acc")


def _average(block: dict[str, Any] | None, label: str) -> float | None:
    return ((block or {}).get("average_acc") or {}).get(label)


def comparison_table(rows: list[dict[str, Any]], dense: dict[str, Any]) -> list[str]:
    """The sweep comparison's zero-shot table (Markdown lines): acc per task and the average, the dense model
    first, then every run (pruned, or pruned → healed); an approximate task is starred. Empty without tasks."""
    block = dense.get("zero_shot")
    if not block:
        return []
    tasks = list(block["tasks"])
    healed = any(_average(r.get("zero_shot"), "healed") is not None for r in rows)
    titles = [task_title(t, block["tasks"][t]) for t in tasks]
    avg_title = "average" + (APPROXIMATE_MARK if block.get("approximate") else "")
    what = "pruned → healed" if healed else "pruned"
    lines = [f"Zero-shot accuracy (acc; {what}; {block['subset']}; n per task: "
             + ", ".join(f"{t} {block['tasks'][t]['n']}" for t in tasks) + "):", "",
             "| method | target | achieved | " + " | ".join([*titles, avg_title]) + " |",
             "|" + "---|" * (4 + len(tasks))]
    dense_cells = [_fmt(_acc(block, t, "dense")) for t in tasks] + [_fmt(_average(block, "dense"))]
    lines.append("| dense | — | — | " + " | ".join(dense_cells) + " |")
    for r in sorted(rows, key=lambda r: (r["sparsity_target"], r["method"])):
        run = r.get("zero_shot")
        if r.get("error") or not run:
            continue

        def cell(pruned: float | None, after: float | None) -> str:
            return f"{_fmt(pruned)} → {_fmt(after)}" if healed else _fmt(pruned)

        cells = [cell(_acc(run, t, "pruned"), _acc(run, t, "healed")) for t in tasks]
        cells.append(cell(_average(run, "pruned"), _average(run, "healed")))
        lines.append(f"| {r['method']} | {r['sparsity_target']:.1%} | {r['sparsity_achieved']:.1%} | "
                     + " | ".join(cells) + " |")
    notes = {e["note"] for e in block["tasks"].values() if e.get("approximate") and e.get("note")}
    lines += ["", *[f"{APPROXIMATE_MARK} Approximate — {note}." for note in sorted(notes)]] if notes else []
    return [*lines, ""]


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def plot_panel(ax: Any, rows: list[dict[str, Any]], dense: dict[str, Any], title: str = "") -> None:
    """The comparison plot's zero-shot panel: average acc against achieved sparsity, one line per method (dotted:
    healed), the dense model's as a dashed line."""
    block = dense["zero_shot"]
    markers = "osD^vP*Xh"
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        runs = [r for r in rows if r["method"] == method and not r.get("error") and r.get("zero_shot")]
        for label, style in (("pruned", "-"), ("healed", ":")):
            points = sorted((r["sparsity_achieved"] * 100, _average(r["zero_shot"], label)) for r in runs
                            if _average(r["zero_shot"], label) is not None)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=markers[i % len(markers)], linestyle=style,
                        label=method if label == "pruned" else f"{method} healed")
    ax.axhline(_average(block, "dense"), color="gray", linestyle="--", linewidth=1, label="dense")
    mark = " (approximate)" if block.get("approximate") else ""
    ax.set_xlabel("achieved sparsity of block parameters (%)")
    ax.set_ylabel(f"average zero-shot acc over {len(block['tasks'])} tasks{mark}")
    ax.set_title(f"{title} — zero-shot" if title else "zero-shot", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
