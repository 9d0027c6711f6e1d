"""Two start-up warnings known to be harmless, hidden where they arise and nowhere else.

Importing diffusers' AnimateDiffPipeline imports transformers' `CLIPImageProcessor` and `SiglipImageProcessor`, and
without torchvision (which the CPU torch cannot have beside it: see the README) transformers says, once each, that it
falls back to their PIL twins. The studio uses those PIL classes on purpose, so the two lines only alarm a presenter
reading the console. A filter on the one logger that says them drops exactly those two messages; every other
transformers warning passes.
"""

from __future__ import annotations

import logging

KNOWN_FALLBACKS = ("`CLIPImageProcessor` requires torchvision", "`SiglipImageProcessor` requires torchvision")
SOURCE = "transformers.utils.import_utils"     # the logger transformers' lazy import says them on


class KnownFallbacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(known in record.getMessage() for known in KNOWN_FALLBACKS)


def hide_known_fallback_warnings() -> None:
    logger = logging.getLogger(SOURCE)
    if not any(isinstance(f, KnownFallbacks) for f in logger.filters):
        logger.addFilter(KnownFallbacks())
