"""The report of a run as the command line prints it."""

from __future__ import annotations

from typing import Any

from twossp_core.evaluation.throughput_check import unreliable_reasons
from twossp_core.evaluation.zeroshot.summary import summary_lines
from twossp_core.plan.sizes import format_size


def spread_text(stats: dict[str, Any] | None) -> str:
    """` ±3%`: half the range of the per-run rates, relative to their median."""
    if not stats:
        return ""
    return f" ±{(stats['max'] - stats['min']) / 2 / stats['median'] * 100:.0f}%"


def format_summary(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [
        f"method {report['method']}  sparsity target {report['sparsity_target']:.4f}  "
        f"achieved {report['sparsity_achieved']:.4f}",
        f"block params {p['blocks_before']:,} -> {p['blocks_after']:,}   "
        f"total {p['total_before']:,} -> {p['total_after']:,}",
    ]
    if report.get("removed_attention"):
        lines.append(f"removed attention blocks: {report['removed_attention']}")
    if report.get("removed_mlp"):
        lines.append(f"removed FFN blocks: {report['removed_mlp']}")
    if report.get("removed_blocks"):
        lines.append(f"removed blocks: {report['removed_blocks']}")
    if report.get("kept_ffn_neurons") is not None:
        lines.append(f"kept FFN neurons per block: {report['kept_ffn_neurons']}")
    for row in report["perplexity"]:
        healed = f" -> healed {row['healed']:.3f}" if "healed" in row else ""
        if row.get("dense_healed"):
            healed += (f" (dense healed the same way {row['dense_healed']:.3f}: "
                       f"healed/control x{row['healed'] / row['dense_healed']:.3f})")
        domain = f" [{row['domain']}]" if row.get("domain") else ""
        lines.append(f"perplexity {row['dataset']}{domain}: dense {row['dense']:.3f} -> pruned {row['pruned']:.3f}"
                     f"{healed}")
    held_out = report.get("held_out")
    if held_out:
        healed_ratio = f" -> healed x{held_out['healed_ratio']:.3f}" if held_out.get("healed_ratio") else ""
        lines.append(f"held-out summary (geometric mean of pruned/dense perplexity over {len(held_out['datasets'])} "
                     f"set{'s' if len(held_out['datasets']) != 1 else ''}): x{held_out['ratio']:.3f}{healed_ratio}")
        domains = {row.get("domain") for row in report["perplexity"] if row["dataset"] in held_out["datasets"]}
        if domains == {"in-domain"}:  # documents the run did not fit on, but from its calibration source only
            lines.append("  (every set is from the calibration source: add --eval sets from other sources, e.g. "
                         "WikiText-2 or PTB, to judge the model off its calibration domain)")
    if "heal" in report:
        h = report["heal"]
        lines.append(f"heal {h['method']} ({h['params']}): {h['steps']} steps, {h['tokens']:,} tokens, lr {h['lr']:g}, "
                     f"loss {h['first_loss']:.4f} -> {h['loss']:.4f}, {h['seconds']:.1f}s")
        if "control" in h:
            c = h["control"]
            lines.append(f"heal control (the dense model healed the same way): {c['steps']} steps, "
                         f"loss {c['first_loss']:.4f} -> {c['loss']:.4f}, {c['seconds']:.1f}s")
    if report.get("zero_shot"):
        lines += summary_lines(report["zero_shot"])
    tp = report.get("throughput_tokens_per_s") or {}
    if tp.get("dense") and tp.get("pruned"):
        spread = report.get("throughput_spread") or {}
        runs = min((s["runs"] for s in spread.values()), default=None)
        unreliable = unreliable_reasons(spread)
        measured = (f"dense {tp['dense']:.0f}{spread_text(spread.get('dense'))} -> "
                    f"pruned {tp['pruned']:.0f}{spread_text(spread.get('pruned'))}")
        if unreliable:  # the figures, but no speed-up: it would say more about the machine than the models
            lines.append(f"throughput tokens/s: not a reliable comparison ({'; '.join(unreliable)}); measured "
                         f"{measured}, no speed-up stated")
        else:
            lines.append(f"throughput tokens/s{f', median of {runs} runs' if runs else ''}: {measured} "
                         f"(x{tp['pruned'] / tp['dense']:.2f})")
    t = report["timings"]
    parts = [f"{k[:-2]} {v:.2f}s" for k, v in t.items() if k.endswith("_s")]
    lines.append("timings: " + ", ".join(parts))
    memory = report.get("memory")
    if memory:
        measured = memory["measured"]
        line = f"memory: {memory['mode']}, peak RSS {format_size(measured['host_peak_rss'])}"
        if measured.get("device_peak_allocated") is not None:
            line += f", device peak {format_size(measured['device_peak_allocated'])}"
        lines.append(line + f" (planned {format_size(memory['plan']['host_peak'])})")
    return "\n".join(lines)
