"""transformers kept quiet while we load: our own progress bars and errors replace its bars and warnings."""

from __future__ import annotations


def quiet_transformers() -> None:
    """Our own progress bars and errors replace transformers' loading bars and warnings."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
