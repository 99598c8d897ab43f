"""core.quiet: the notices a published checkpoint's code prints on load stay out of a notebook (01 on real weights)."""
import subprocess
import sys

import pytest

# the three kinds 01 printed on the official-format InternVL2-8B: the remote code's logger (flash-attn missing),
# transformers' own logger (no GenerationMixin) and timm's FutureWarning
EMIT = """
import logging, warnings
from transformers.utils import logging as hf_logging
{hide}
hf_logging.get_logger("transformers_modules.InternVL2_hyphen_8B.modeling_internlm2").warning("`flash-attention` package not found")
hf_logging.get_logger("transformers.modeling_utils").warning("InternLM2ForCausalLM has generative capabilities")
warnings.warn("Importing from timm.models.layers is deprecated, please import via timm.layers", FutureWarning)
"""


@pytest.mark.parametrize("hide", [False, True])
def test_hide_library_notices(hide):
    code = EMIT.format(hide="from labsupport.core import quiet; quiet.hide_library_notices()" if hide else "")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    shown = [m for m in ("flash-attention", "generative capabilities", "timm.models.layers") if m in run.stderr]
    if hide:
        assert shown == [] and "are hidden" in run.stdout   # nothing shown, and the notebook says so once
    else:
        assert len(shown) == 3   # the notices do reach stderr when nothing hides them
