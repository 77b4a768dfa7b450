"""A :class:`GenerativeRanker` built from a run directory the way the precache stage builds its
actors, for everything that decodes histories outside the precache job (online generation, a
refresh of touched users).

A user in the precache who posts their test history must get the precached list back, so this
decodes exactly as the precache did: the same ``model/`` (base, merged adapter, the prompt format
and code softmax of ``model/recommender.json``), ``item_codes/``, beam width, K and history
exclusion (read from ``precache/_SUCCESS``; the precache config's defaults when there is no
precache yet), and the same dtype: the one ``precache/_SUCCESS`` recorded, not the one this
machine would pick (:func:`semconv.hardware.matching_dtype`; a precache run in float32 on a CPU
without native bf16 is matched in float32 on one with it, and vice versa), unless ``bf16`` is
given explicitly. Prompts keep a history's last ``prepare.max_len`` items (``splits/_SUCCESS``),
as training and the splits did.

``run_dir`` is a local path or any ``pyarrow.fs`` URI; a remote ``model/`` is copied to a local
cache once (:meth:`semconv.artifacts.RunDir.local`), since Hugging Face loads from paths.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from semconv.artifacts import SUCCESS, ArtifactError, RunDir
from semconv.hardware import matching_dtype
from semconv.inference.config import PrecacheConfig
from semconv.inference.loading import ModelSpec

MODEL, PRECACHE, SPLITS = "model", "precache", "splits"


@dataclass(frozen=True)
class RankerSettings:
    """How a run's model decodes: what the precache used, resolved for this process."""

    model_version: str  # hash of model/_SUCCESS: names the model in every answer
    base_model: str
    dtype: str
    dtype_reason: str
    num_beams: int
    top_k: int
    exclude_history: bool
    max_len: int | None  # prompts keep the last max_len items (None: the whole history)
    precache_dtype: str | None  # the dtype the precache ran in (None: no precache yet)
    dtype_warning: str | None = None  # the dtype will be slow here (bf16 on a CPU without native bf16)


def model_version(run: RunDir) -> str:
    """``model-<16 hex>``: a hash of ``model/_SUCCESS`` (it holds the creation time), so two
    fine-tunes of one run directory never share a version."""
    run.manifest(MODEL)
    with run.fs.open_input_stream(f"{run.path(MODEL)}/{SUCCESS}") as f:
        raw = f.read()
    return "model-" + hashlib.sha256(raw).hexdigest()[:16]


def resolve_settings(
    run: RunDir,
    bf16: bool | Literal["auto"] = "auto",
    use_gpu: bool = False,
    max_len: int | None = None,
) -> RankerSettings:
    """The precache's decoding settings for ``run`` (see the module docstring).

    ``bf16="auto"`` is the precache's recorded dtype (the machine's rule, as ``precache.bf16``,
    when there is no precache); ``True`` / ``False`` force bf16 / float32. ``max_len`` overrides
    the splits' ``max_len``.
    """
    model = run.manifest(MODEL)
    cached = run.manifest(PRECACHE) if run.is_complete(PRECACHE) else {}
    defaults = PrecacheConfig()
    base_model = model.get("base_model") or cached.get("base_model")
    if not base_model:
        raise ArtifactError(f"{run.path(MODEL)}/{SUCCESS} names no base_model: rerun the finetune stage")
    if max_len is None and run.is_complete(SPLITS):
        max_len = run.manifest(SPLITS).get("max_len")
    precache_dtype = cached.get("dtype")
    choice = matching_dtype(bf16, use_gpu, precache_dtype)
    return RankerSettings(
        model_version=model_version(run),
        base_model=str(base_model),
        dtype=choice.dtype,
        dtype_reason=choice.reason,
        num_beams=int(cached.get("num_beams", defaults.num_beams)),
        top_k=int(cached.get("top_k", defaults.top_k)),
        exclude_history=bool(cached.get("exclude_history", defaults.exclude_history)),
        max_len=int(max_len) if max_len is not None else None,
        precache_dtype=precache_dtype,
        dtype_warning=choice.warning,
    )


def load_run_ranker(
    run: RunDir | str,
    settings: RankerSettings | None = None,
    *,
    use_gpu: bool = False,
    batch_size: int = 16,
    share_prefix: bool = True,
):
    """``(GenerativeRanker, RankerSettings)`` for ``run``'s fine-tuned model, on the GPU when
    ``use_gpu``. ``settings`` defaults to :func:`resolve_settings`."""
    from semconv.inference.ranker import GenerativeRanker
    from semconv.codes import read_item_codes

    run = run if isinstance(run, RunDir) else RunDir(run)
    settings = settings or resolve_settings(run, use_gpu=use_gpu)
    run.require(MODEL, "item_codes")
    spec = ModelSpec(model_dir=str(run.local(MODEL)), base_model=settings.base_model, dtype=settings.dtype)
    item_ids, codes = read_item_codes(run)
    ranker = GenerativeRanker.from_spec(spec, codes, item_ids, settings.num_beams, settings.top_k, batch_size,
                                        share_prefix, use_gpu, max_len=settings.max_len)
    return ranker, settings

