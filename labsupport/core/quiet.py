"""Library notices a learner cannot act on, hidden before a checkpoint's own code is imported (said once)."""
from __future__ import annotations

import logging
import warnings

# What the published InternVL2 remote code prints on every load: flash-attn is missing, eager attention is used, its
# LLM class does not inherit GenerationMixin (transformers' logger), timm's old import path (a FutureWarning).
_WARNINGS = (r".*Importing from timm.models.layers is deprecated.*",)


def hide_library_notices() -> None:
    """Keep transformers' and the remote code's loggers to errors and drop the FutureWarnings above; print a note saying so."""
    for pattern in _WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass  # an environment without transformers loads no remote code
    logging.getLogger("transformers_modules").setLevel(logging.ERROR)  # a checkpoint's own modules log here
    print("note: notices printed inside the libraries and the checkpoint's own code (flash-attn missing, deprecations) "
          "are hidden: nothing in them is yours to fix")
