"""Whether the Hugging Face Hub can be reached, checked once before a run needs it, so that a machine without
network fails at once with what to do instead of after the datasets library's retries."""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from twossp_core.errors import DataError, ModelNotFound

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
PROBE_TIMEOUT_S = 5.0


def offline_mode() -> bool:
    """The user asked for cached data only (the libraries then never touch the network)."""
    return any(os.environ.get(name, "") not in ("", "0", "false", "False") for name in OFFLINE_VARIABLES)


def hub_unreachable(timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the Hub's endpoint answers (any HTTP status); otherwise why it cannot be reached."""
    from huggingface_hub import constants

    request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()  # noqa: S310 - the configured hub endpoint
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{constants.ENDPOINT}: {reason}"
    return None


def require_hub_datasets(names: list[str]) -> None:
    """Raise DataError when hub datasets are needed but the Hub cannot be reached."""
    if not names or offline_mode():
        return
    reason = hub_unreachable()
    if reason is not None:
        raise DataError(
            f"hub dataset {', '.join(repr(n) for n in names)} needs the Hugging Face Hub, which cannot be reached "
            f"({reason}): pass local data instead (`calibration` and `eval`: .txt, .jsonl or .parquet files), "
            "or set HF_DATASETS_OFFLINE=1 to use datasets already in the cache"
        )


def require_hub_model(model_id: str) -> None:
    """Raise ModelNotFound when a hub model is not in the local cache and the Hub cannot be reached."""
    from huggingface_hub import try_to_load_from_cache

    if offline_mode() or isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return
    reason = hub_unreachable()
    if reason is not None:
        raise ModelNotFound(
            f"{model_id}: not a local directory, and the Hugging Face Hub cannot be reached to download it "
            f"({reason}): pass a local model directory"
        )
