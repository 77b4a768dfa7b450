"""Model loading for decoding: torch stays out of the precache job's light tasks; dtypes checked."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from semconv.inference.loading import ModelSpec


def test_the_precache_modules_import_without_torch():
    """Ray Data read/filter tasks import these; torch would add ~200 MB to every such worker."""
    code = "import sys, semconv.inference.stage, semconv.inference.precache; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_model_spec_loads_in_the_named_dtype_and_rejects_unknown_ones(tiny_lm_dir):
    spec = ModelSpec(base_model=str(tiny_lm_dir), dtype="bfloat16", code_levels=2, codes_per_level=3)
    model, tok = spec.load()
    assert next(model.parameters()).dtype == torch.bfloat16 and "<b_2>" in tok.get_vocab()
    with pytest.raises(ValueError, match="ModelSpec.dtype must be one of"):
        ModelSpec(base_model=str(tiny_lm_dir), dtype="fp8").load()
