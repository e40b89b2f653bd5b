"""The comparison of a sweep as a Markdown table and a perplexity-vs-sparsity plot (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def datasets(rows: list[dict[str, Any]], dense: dict[str, Any]) -> list[str]:
    return [d["dataset"] for d in dense["perplexity"]]


def dataset_title(name: str, dense: dict[str, Any]) -> str:
    """`name`, or "`name` (first N windows)" when the sweep's eval_windows capped the set (dense's eval_windows and
    eval_cap): its perplexity is then not the whole set's."""
    cap, count = dense.get("eval_cap"), (dense.get("eval_windows") or {}).get(name)
    return f"{name} (first {count} windows)" if cap is not None and count is not None and count >= cap else name


def _ppl(row: dict[str, Any], dataset: str, key: str = "pruned") -> float | None:
    for item in row.get("perplexity") or []:
        if item["dataset"] == dataset:
            return item.get(key)
    return None


def dataset_domains(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Each evaluation set's domain (`out-of-domain`, `in-domain`, `overlaps-calibration`) as the runs report it."""
    return {item["dataset"]: item["domain"] for r in rows for item in r.get("perplexity") or [] if "domain" in item}


def _held_out(row: dict[str, Any], key: str = "ratio") -> float | None:
    return (row.get("held_out") or {}).get(key)


def held_out_pivot(rows: list[dict[str, Any]]) -> list[str]:
    """The headline: per method and target, the geometric mean over the held-out sets of pruned / dense
    perplexity (healed / dense after a heal); nothing when no run has a held-out set."""
    with_summary = [r for r in rows if not r.get("error") and r.get("held_out")]
    if not with_summary:
        return []
    sets = with_summary[0]["held_out"]["datasets"]
    targets = sorted({r["sparsity_target"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    healed = any(_held_out(r, "healed_ratio") is not None for r in with_summary)
    lines = [f"Held-out summary: geometric mean over {', '.join(f'`{s}`' for s in sets)} of pruned / dense "
             "perplexity" + (" (pruned → healed)" if healed else "") + "; lower is better, 1.00 = dense:", ""]
    lines.append("| method | " + " | ".join(f"{t:.1%}" for t in targets) + " |")
    lines.append("|---|" + "---|" * len(targets))
    for m in methods:
        cells = []
        for t in targets:
            row = next((r for r in rows if r["method"] == m and r["sparsity_target"] == t), None)
            if row is None or row.get("error") or not row.get("held_out"):
                cells.append("error" if row and row.get("error") else "—")
            elif healed:
                cells.append(f"{_fmt(_held_out(row), '.2f')} → {_fmt(_held_out(row, 'healed_ratio'), '.2f')}")
            else:
                cells.append(_fmt(_held_out(row), ".2f"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def healed_rows(rows: list[dict[str, Any]]) -> bool:
    """Whether the sweep healed its models (every entry then has `healed` next to `pruned`)."""
    return any("healed" in item for r in rows for item in r.get("perplexity") or [])


def controlled_rows(rows: list[dict[str, Any]]) -> bool:
    """Whether the heal had a control (every entry then has `dense_healed`: the dense model healed the same way)."""
    return any("dense_healed" in item for r in rows for item in r.get("perplexity") or [])


def control_ratio(row: dict[str, Any], dataset: str) -> float | None:
    """Healed perplexity / the control's (the dense model healed the same way): below 1, the pruned model healed
    past what the same heal makes of the dense model."""
    healed, control = _ppl(row, dataset, "healed"), _ppl(row, dataset, "dense_healed")
    return healed / control if healed and control else None


def comparison_markdown(rows: list[dict[str, Any]], dense: dict[str, Any], *, title: str = "Comparison") -> str:
    names = datasets(rows, dense)
    lines = [f"# {title}", ""]
    dense_ppl = ", ".join(f"{dataset_title(d['dataset'], dense)} {d['perplexity']:.3f}" for d in dense["perplexity"])
    tp = dense.get("throughput_tokens_per_s")
    lines.append(f"Dense model: perplexity {dense_ppl}" + (f"; throughput {tp:.0f} tokens/s" if tp else "") + ".")
    if any("healed" in d for d in dense["perplexity"]):
        control = ", ".join(f"{d['dataset']} {d['healed']:.3f}" for d in dense["perplexity"] if "healed" in d)
        lines.append(f"Dense model healed the same way (the heal's control, once for the sweep): perplexity "
                     f"{control}; `healed/control` below 1 means the pruned model healed past it.")
    lines.append("")
    domain = dataset_domains(rows)
    if domain:
        lines.append("Evaluation sets: " + ", ".join(f"`{n}` {domain.get(n, 'out-of-domain')}" for n in names)
                     + " (relative to the calibration data).")
        lines.append("")
    lines += held_out_pivot(rows)
    # pivot: perplexity per method x target sparsity (first dataset), the headline view
    if names and rows:
        first = names[0]
        targets = sorted({r["sparsity_target"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        healed = healed_rows(rows)
        what = "pruned → healed perplexity" if healed else "Perplexity"
        lines += [f"{what[0].upper()}{what[1:]} on `{dataset_title(first, dense)}` (achieved sparsity in "
                  "parentheses):", ""]
        lines.append("| method | " + " | ".join(f"{t:.1%}" for t in targets) + " |")
        lines.append("|---|" + "---|" * len(targets))
        for m in methods:
            cells = []
            for t in targets:
                row = next((r for r in rows if r["method"] == m and r["sparsity_target"] == t), None)
                if row is None or row.get("error"):
                    cells.append("error" if row else "—")
                elif healed:
                    cells.append(f"{_ppl(row, first):.3f} → {_fmt(_ppl(row, first, 'healed'), '.3f')} "
                                 f"({row['sparsity_achieved']:.1%})")
                else:
                    cells.append(f"{_ppl(row, first):.3f} ({row['sparsity_achieved']:.1%})")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    healed = healed_rows(rows)
    controlled = healed and controlled_rows(rows)
    healed_cols = ([f"healed {n}" for n in names] if healed else []) + (
        [f"healed/control {n}" for n in names] if controlled else [])
    summary = any(r.get("held_out") for r in rows)
    header = ["method", "target", "achieved", *[f"ppl {n}" for n in names], *healed_cols,
              *(["held-out ×"] if summary else []), "prune s",
              *(["heal s"] if healed else []), "tokens/s", "speedup"]
    lines += ["All runs:", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: (r["sparsity_target"], r["method"])):
        if r.get("error"):
            cells = [r["method"], f"{r['sparsity_target']:.1%}", "—",
                     *["—"] * (len(names) + len(healed_cols) + int(summary)), "—",
                     *(["—"] if healed else []), "—", r["error"]]
        else:
            tps = (r.get("throughput_tokens_per_s") or {}).get("pruned")
            cells = [
                r["method"], f"{r['sparsity_target']:.1%}", f"{r['sparsity_achieved']:.1%}",
                *[_fmt(_ppl(r, n), ".3f") for n in names],
                *([_fmt(_ppl(r, n, "healed"), ".3f") for n in names] if healed else []),
                *([_fmt(control_ratio(r, n), ".3f") for n in names] if controlled else []),
                *([_fmt(_held_out(r), ".3f")] if summary else []), _fmt(r["prune_s"], ".2f"),
                *([_fmt(r.get("heal_s"), ".1f")] if healed else []), _fmt(tps, ".0f"),
                "not reliable" if r.get("throughput_unreliable")
                else _fmt(r.get("speedup"), ".2f") + ("x" if r.get("speedup") else ""),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({r["note"] for r in rows if r.get("note")})
    notes += [f"{r['method']} at {r['sparsity_target']:.1%}: speed-up not reliable, "
              f"{'; '.join(r['throughput_unreliable'])}" for r in rows if r.get("throughput_unreliable")]
    notes += [f"{r['method']} at {r['sparsity_target']:.1%}: warning: {w}"
              for r in rows for w in r.get("warnings") or []]
    if notes:
        lines += ["", *[f"Note — {n}." for n in notes]]
    if dense.get("zero_shot"):
        from twossp_core.evaluation.zeroshot.summary import comparison_table

        lines += ["", *comparison_table(rows, dense)]
    return "\n".join(lines) + "\n"


def plot_comparison(
    rows: list[dict[str, Any]], dense: dict[str, Any], paths: Sequence[Path], *, title: str = ""
) -> None:
    """Perplexity (log scale) against achieved sparsity, one line per method, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = datasets(rows, dense)
    panels = max(len(names), 1) + (1 if dense.get("zero_shot") else 0)  # and one for zero-shot accuracy
    fig, axes = plt.subplots(1, panels, figsize=(6.4 * panels, 4.6), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = "osD^vP*Xh"
    for ax, name in zip(axes[0], names, strict=False):
        for i, m in enumerate(methods):
            points = sorted(
                (r["sparsity_achieved"], _ppl(r, name)) for r in rows
                if r["method"] == m and not r.get("error") and _ppl(r, name) is not None
            )
            if points:
                xs, ys = zip(*points, strict=True)
                line = ax.plot([x * 100 for x in xs], ys, marker=markers[i % len(markers)], label=m)[0]
            healed = sorted(
                (r["sparsity_achieved"], _ppl(r, name, "healed")) for r in rows
                if r["method"] == m and not r.get("error") and _ppl(r, name, "healed") is not None
            )
            if points and healed:
                xs, ys = zip(*healed, strict=True)
                ax.plot([x * 100 for x in xs], ys, marker=markers[i % len(markers)], linestyle=":",
                        color=line.get_color(), fillstyle="none", label=f"{m} healed")
        dense_value = next(d["perplexity"] for d in dense["perplexity"] if d["dataset"] == name)
        ax.axhline(dense_value, color="gray", linestyle="--", linewidth=1, label="dense")
        control = next((d.get("healed") for d in dense["perplexity"] if d["dataset"] == name), None)
        if control is not None:
            ax.axhline(control, color="gray", linestyle=":", linewidth=1, label="dense healed (control)")
        ax.set_yscale("log")
        ax.set_xlabel("achieved sparsity of block parameters (%)")
        ax.set_ylabel("perplexity (log scale)")
        label = Path(dataset_title(name, dense)).name
        ax.set_title(f"{title} — {label}" if title else label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if dense.get("zero_shot"):
        from twossp_core.evaluation.zeroshot.summary import plot_panel

        plot_panel(axes[0][-1], rows, dense, title)
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
