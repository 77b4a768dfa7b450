"""What this machine runs fast: native bf16 on the CPU, and so the dtype inference should use.

bf16 halves a CPU matmul's time only where oneDNN has native kernels (AVX512-BF16 or AMX).
Elsewhere it emulates them: on this repo's 2-core EPYC with oneDNN held to AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``) a bf16 ``(256, 576) @ (576, 1536)`` takes 233 ms against 4.8 ms in
float32, ~50x; issue #14 measured ~28x on a CPU without AVX512-BF16. So precache picks its dtype
from :func:`cpu_bf16_supported` (as the fine-tune's autocast does) unless told otherwise.
Decoding that must answer like an existing precache (online generation, a refresh) does not
choose again: it runs in the dtype that precache recorded (:func:`matching_dtype`).

torch is imported inside the functions: the precache stage imports this module, and its Ray
Data read tasks must stay free of torch (see :mod:`semconv.inference.loading`).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Literal

FORCE_NO_BF16 = "SEMCONV_FORCE_NO_BF16"
FORCE_BF16 = "SEMCONV_FORCE_BF16"
NO_BF16_SLOWDOWN = "~28x"  # bf16 vs float32 matmul on a CPU without native bf16 (issue #14)


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 matmuls natively (oneDNN with AVX512-BF16 or AMX).

    ``SEMCONV_FORCE_NO_BF16=1`` makes it answer False, so a user whose CPU has AVX512-BF16 can
    measure what a CPU without it does: precache's ``bf16: auto`` then runs float32 and the
    fine-tune's autocast is off. It changes our choice, not the kernels; to also run the
    emulated bf16 kernels such a CPU would (e.g. with ``precache.bf16=true``), set
    ``ONEDNN_MAX_CPU_ISA=AVX2`` too (oneDNN then reports no bf16 itself).

    ``SEMCONV_FORCE_BF16=1`` makes it answer True: every choice a CPU with native bf16 gets (the
    fine-tune's autocast, ``bf16: auto``), on any CPU, whose kernels then emulate bf16 (~28x
    slower matmuls). It is for running the test suite as such a CPU would, not for speed.
    """
    force_no, force = (os.environ.get(name, "").strip() not in ("", "0") for name in (FORCE_NO_BF16, FORCE_BF16))
    if force_no and force:
        raise ValueError(f"{FORCE_NO_BF16} and {FORCE_BF16} are both set: unset one of them")
    if force_no or force:
        return force
    import torch

    try:
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() and native)
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype inference runs in, why (one line for the log and the manifest), and a warning
    when the choice will be slow."""

    dtype: Literal["bfloat16", "float32"]
    reason: str
    warning: str | None = None


def inference_dtype(bf16: bool | Literal["auto"], use_gpu: bool) -> DtypeChoice:
    """Resolve ``precache.bf16``: ``"auto"`` is bf16 on a GPU or on a CPU with native bf16, else
    float32; ``True`` forces bf16 (with a warning on a CPU without native bf16); ``False`` float32."""
    if bf16 == "auto":
        if use_gpu:
            return DtypeChoice("bfloat16", "auto: GPU")
        if cpu_bf16_supported():
            return DtypeChoice("bfloat16", "auto: this CPU has native bf16")
        return DtypeChoice("float32", "auto: this CPU has no native bf16")
    if bf16 is True:
        warning = None
        if not use_gpu and not cpu_bf16_supported():
            warning = (f"precache.bf16=true on a CPU without native bf16 (AVX512-BF16 or AMX): "
                       f"bf16 matmuls run {NO_BF16_SLOWDOWN} slower than float32 here, so precache "
                       f"may take hours; set precache.bf16=auto (or false) to run float32")
        return DtypeChoice("bfloat16", "precache.bf16=true", warning)
    if bf16 is False:
        return DtypeChoice("float32", "precache.bf16=false")
    raise ValueError(f"precache.bf16 must be true, false or 'auto', not {bf16!r}")


RECORDED_DTYPES = ("float32", "bfloat16", "float16")


def matching_dtype(bf16: bool | Literal["auto"], use_gpu: bool, recorded: str | None,
                   setting: str = "generation.bf16") -> DtypeChoice:
    """The dtype for decoding that must answer like an existing precache (online generation, a
    refresh's re-ranking): with ``bf16="auto"`` the dtype the precache ``recorded`` in its
    manifest, whatever this machine would pick for itself, since bf16 and float32 scores differ
    by ~1e-3 and so can order near-ties (and the K-th item) differently; ``True`` / ``False``
    (``setting``, named in the reason) force bf16 / float32, as :func:`inference_dtype`. Without
    a recorded dtype (no precache yet) ``auto`` is :func:`inference_dtype`'s machine rule.
    A recorded bf16 on a CPU without native bf16 comes with a warning: it is slow there."""
    if bf16 == "auto" and recorded is not None:
        if recorded not in RECORDED_DTYPES:
            raise ValueError(f"the precache recorded dtype {recorded!r}, not one of {RECORDED_DTYPES}")
        warning = None
        if recorded == "bfloat16" and not use_gpu and not cpu_bf16_supported():
            warning = (f"decoding in bfloat16, the precache's dtype, on a CPU without native bf16: bf16 matmuls "
                       f"run {NO_BF16_SLOWDOWN} slower than float32 here; set {setting}=false to run float32 "
                       "(answers can then differ from the precache at near-ties)")
        return DtypeChoice(recorded, f"auto: the precache's dtype ({recorded})", warning)  # type: ignore[arg-type]
    choice = inference_dtype(bf16, use_gpu)
    if bf16 == "auto":
        return DtypeChoice(choice.dtype, f"{choice.reason} (no precache dtype recorded)", choice.warning)
    return DtypeChoice(choice.dtype, choice.reason.replace("precache.bf16", setting),
                       choice.warning and choice.warning.replace("precache.bf16", setting))


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, object]:
    """What a timing was measured on: CPU model, cores, native bf16, torch threads (this process)."""
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "bf16_native": cpu_bf16_supported(),
            "torch_threads": torch.get_num_threads()}
