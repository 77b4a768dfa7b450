"""The ranker spec: everything that decides the list a history gets, resolved in one function.

The precache actors, a refresh's re-decoding and online generation must answer one history
alike, so all three build their :class:`~semconv.inference.ranker.GenerativeRanker` from a
:class:`RankerSpec` made by :func:`resolve_settings`: the run's ``model/`` (base, merged adapter,
and the prompt format and code softmax of ``model/recommender.json``), the beam width, K, the
prompt's ``max_len``, the history exclusion of :mod:`semconv.protocol` and the dtype.

Each setting is, first found: given explicitly (the Serve app's ``generation.bf16`` / ``max_len``);
what the precache these lists must agree with recorded (its ``_SUCCESS``: online generation
follows the run's own, a refresh its base's); the pipeline config (``precache.*``,
``prepare.max_len``; the precache stage itself, before anything is recorded); the defaults
(``splits/`` ``max_len``). The dtype follows the recorded one under ``bf16="auto"``
(:func:`semconv.hardware.matching_dtype`: a float32 precache is matched in float32 on a CPU with
native bf16, and vice versa); with nothing recorded the machine's rule picks it.

``run_dir`` is a local path or any ``pyarrow.fs`` URI; a remote ``model/`` is copied to a local
cache once (:meth:`semconv.artifacts.RunDir.local`), since Hugging Face loads from paths.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from semconv.artifacts import SUCCESS, ArtifactError, RunDir
from semconv.decoding import Decoding
from semconv.hardware import inference_dtype, matching_dtype
from semconv.inference.config import PrecacheConfig
from semconv.inference.loading import ModelSpec

if TYPE_CHECKING:
    import numpy as np

    from semconv.config import PipelineConfig
    from semconv.inference.ranker import GenerativeRanker

MODEL, PRECACHE, SPLITS = "model", "precache", "splits"


@dataclass(frozen=True)
class RankerSpec:
    """How a model ranks a history; picklable, so a Ray actor builds its ranker from it."""

    model: ModelSpec  # weights, base model, dtype and decoding (model/recommender.json)
    num_beams: int
    top_k: int
    max_len: int | None  # the prompt keeps a history's last max_len items (None: all of them)
    exclude_history: bool  # never recommend an item of the whole history (semconv.protocol)
    dtype_reason: str = ""
    dtype_warning: str | None = None  # the dtype will be slow here (bf16 on a CPU without native bf16)
    precache_dtype: str | None = None  # the dtype the followed precache ran in (None: none recorded)
    model_version: str = ""  # hash of model/_SUCCESS: names the model in every answer

    @property
    def dtype(self) -> str:
        return self.model.dtype

    @property
    def base_model(self) -> str:
        return self.model.base_model

    @property
    def decoding(self) -> Decoding:
        return self.model.resolved_decoding()

    def build(self, item_codes: np.ndarray, item_ids: np.ndarray | None = None, *, batch_size: int = 16,
              share_prefix: bool = True, use_gpu: bool = False) -> GenerativeRanker:
        """Load the model and its trie (once per actor or server); ``batch_size``,
        ``share_prefix`` and ``use_gpu`` change how fast it ranks, not what."""
        from semconv.inference.ranker import GenerativeRanker

        model, tokenizer = self.model.load()
        if use_gpu:
            model = model.to("cuda")
        return GenerativeRanker(model, tokenizer, item_codes, self.num_beams, self.top_k, batch_size,
                                share_prefix, item_ids, decoding=self.decoding, max_len=self.max_len)

    def record(self) -> dict[str, Any]:
        """What a precache's ``_SUCCESS`` records of its spec, read back by :func:`resolve_settings`."""
        return {"base_model": self.base_model, "num_beams": self.num_beams, "top_k": self.top_k,
                "max_len": self.max_len, "exclude_history": self.exclude_history, "dtype": self.dtype,
                "dtype_reason": self.dtype_reason, **asdict(self.decoding)}


def model_version(run: RunDir) -> str:
    """``model-<16 hex>``: a hash of ``model/_SUCCESS`` (it holds the creation time), so two
    fine-tunes of one run directory never share a version."""
    run.manifest(MODEL)
    with run.fs.open_input_stream(f"{run.path(MODEL)}/{SUCCESS}") as f:
        raw = f.read()
    return "model-" + hashlib.sha256(raw).hexdigest()[:16]


def resolve_settings(
    run: RunDir | str,
    bf16: bool | Literal["auto"] | None = None,
    use_gpu: bool | None = None,
    max_len: int | None = None,
    *,
    cfg: PipelineConfig | None = None,
    base: RunDir | None = None,
) -> RankerSpec:
    """The spec of ``run``'s fine-tuned model (precedence in the module docstring).

    ``base`` is the run or version whose precache the lists must agree with (default ``run``);
    ``cfg`` the pipeline config (None: serving, the precache config's defaults); ``bf16`` and
    ``use_gpu`` default to ``cfg``'s ``precache.bf16`` / ``precache.use_gpu`` (``"auto"`` / CPU).
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    base = base or run
    pc = cfg.precache if cfg is not None else PrecacheConfig()
    recorded = base.manifest(PRECACHE) if base.is_complete(PRECACHE) else {}
    bf16 = pc.bf16 if bf16 is None else bf16
    use_gpu = pc.use_gpu if use_gpu is None else use_gpu
    if recorded.get("dtype") is None and cfg is not None:
        choice = inference_dtype(bf16, use_gpu)  # building a precache: the machine's rule
    else:
        choice = matching_dtype(bf16, use_gpu, recorded.get("dtype"),
                                "precache.bf16" if cfg is not None else "generation.bf16")
    model = run.manifest(MODEL)
    base_model = model.get("base_model") or recorded.get("base_model") or (cfg and cfg.finetune.base_model)
    if not base_model:
        raise ArtifactError(f"{run.path(MODEL)}/{SUCCESS} names no base_model: rerun the finetune stage")
    if max_len is None:
        max_len = recorded.get("max_len") or (cfg.prepare.max_len if cfg is not None else None)
    if max_len is None and base.is_complete(SPLITS):
        max_len = base.manifest(SPLITS).get("max_len")
    model_dir = str(run.local(MODEL))
    return RankerSpec(
        model=ModelSpec(model_dir=model_dir, base_model=str(base_model), dtype=choice.dtype,
                        decoding=Decoding.load(model_dir)),
        num_beams=int(recorded.get("num_beams", pc.num_beams)),
        top_k=int(recorded.get("top_k", pc.top_k)),
        max_len=int(max_len) if max_len is not None else None,
        exclude_history=bool(recorded.get("exclude_history", pc.exclude_history)),
        dtype_reason=choice.reason,
        dtype_warning=choice.warning,
        precache_dtype=recorded.get("dtype"),
        model_version=model_version(run),
    )


def load_run_ranker(
    run: RunDir | str,
    settings: RankerSpec | None = None,
    *,
    use_gpu: bool = False,
    batch_size: int = 16,
    share_prefix: bool = True,
) -> tuple[GenerativeRanker, RankerSpec]:
    """``(GenerativeRanker, RankerSpec)`` for ``run``'s fine-tuned model and ``item_codes/``, on
    the GPU when ``use_gpu``. ``settings`` defaults to :func:`resolve_settings`."""
    from semconv.codes import read_item_codes

    run = run if isinstance(run, RunDir) else RunDir(run)
    settings = settings or resolve_settings(run, use_gpu=use_gpu)
    run.require(MODEL, "item_codes")
    item_ids, codes = read_item_codes(run)
    return settings.build(codes, item_ids, batch_size=batch_size, share_prefix=share_prefix,
                          use_gpu=use_gpu), settings
