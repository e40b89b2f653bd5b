"""How a command runs a job: progress bars on stderr, into a checked --out directory."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from twossp_core.cli.options import check_out_dir, task_data
from twossp_core.plan.spec import JobSpecBase


class StageBars:
    """One progress bar per stage, on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, fraction: float, detail: str | None = None) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=100, desc=f"{stage:<16}", unit="%", file=sys.stderr,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}{postfix}")
        if detail is not None:
            self.bar.set_postfix_str(detail, refresh=False)
        percent = round(fraction * 100)
        if percent > self.bar.n:
            self.bar.update(percent - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_into_out_dir(args: argparse.Namespace, run: Callable[..., dict[str, Any]], spec: JobSpecBase) -> dict[str, Any]:
    """Check --out, then run a job (run_prune or run_sweep) into it with progress bars, its zero-shot tasks read
    from where the command's flags say."""
    out = Path(args.out)
    check_out_dir(out, args.overwrite)
    bars = StageBars(enabled=not args.no_progress)
    try:
        return run(spec.with_task_data(task_data(args)), out, progress=bars)
    finally:
        bars.close()
