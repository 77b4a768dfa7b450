"""Config of the ``evaluate`` stage: metrics, baselines (same splits, same metric code), report."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from semconv.schema import Section

BASELINES = ("popularity", "sasrec", "cf", "scratch")


class SASRecConfig(Section):
    """SASRec (Kang & McAuley 2018) trained inside the evaluate stage as a sequential baseline.

    Architecture defaults are the original paper's (2 blocks, hidden 64, one head, dropout 0.5
    for the sparse Amazon data; use 0.2 for dense data). ``loss="bce"`` is the original
    one-negative objective, ``"ce"`` a full softmax over all items, which converges in far fewer
    epochs; with it, lr 2e-3 (the paper: 1e-3) reaches the same valid NDCG@10 (0.069 on the demo)
    in about half the epochs.

    Not in the lineage fingerprint (how the stage runs, not what it writes):
    ``num_threads``. ``max_seconds`` is in it: it decides how long SASRec trains.
    """

    hidden: int = Field(64, ge=8)
    blocks: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    max_len: int | None = Field(None, ge=1, description="None: prepare.max_len")
    loss: Literal["ce", "bce"] = "ce"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(200, ge=1, description="upper bound; early stopping usually ends sooner")
    patience: int = Field(3, ge=1, description="evaluations without a better valid NDCG@10")
    eval_every: int = Field(2, ge=1, description="epochs between validation passes")
    max_seconds: float | None = Field(240.0, gt=0, description="training time budget, checked every "
                                      "batch (None: none)")
    valid_users: int | None = Field(10_000, ge=1, description="seeded sample of valid rows early "
                                    "stopping ranks (None: every user's)")
    num_threads: int | None = Field(
        1, ge=1, description="torch threads; small models run fastest on one (None: torch default)"
    )


class ScratchConfig(Section):
    """The ``scratch`` baseline (:mod:`semconv.evaluate.scratch`): ours with a small decoder
    initialised at random in place of the pretrained LLM, trained every weight by the same loop
    on the same ``sft/`` rows and decoded by the same constrained beam search.

    Not in the lineage fingerprint (how the stage runs, not what it writes): ``num_threads``.
    """

    hidden: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    max_positions: int = Field(2048, ge=64, description="longest prompt + codes it can read")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1, description="packed sequences (finetune.pack_len) per step")
    warmup_steps: int = Field(20, ge=0)
    max_steps: int | None = Field(None, ge=1, description="step budget (None: finetune.max_steps)")
    max_minutes: float | None = Field(
        None, gt=0, description="time budget (None: finetune.max_minutes); with both budgets as ours by "
        "default, the baseline gets what ours had")
    num_beams: int | None = Field(None, ge=1, description="None: precache.num_beams")
    num_threads: int | None = Field(None, ge=1, description="torch threads (None: torch default)")


class EvaluateConfig(Section):
    """Metrics and baselines of the report. Every key is in the lineage fingerprint."""

    ks: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [1, 5, 10], min_length=1, description="cut-offs of HR@K and NDCG@K"
    )
    baselines: list[Literal["popularity", "sasrec", "cf", "scratch"]] = Field(
        default_factory=lambda: list(BASELINES),
        description="baselines ranked on the same splits with the same metric code",
    )
    valid: bool = Field(True, description="also report valid-split metrics where available")
    sasrec: SASRecConfig = SASRecConfig()
    scratch: ScratchConfig = ScratchConfig()
    plots: bool = Field(True, description="write PNG plots (matplotlib Agg) into report/")
