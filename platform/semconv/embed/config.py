"""Config of the ``embed`` stage: behaviour (collaborative) and LLM text item embeddings."""

from __future__ import annotations

from pydantic import Field

from semconv.schema import Section


class CFConfig(Section):
    """The collaborative-filtering model (LightGCN) trained when no item embeddings are supplied.

    Defaults train the demo (8k users, 4k items, ~33k train rows) in well under two minutes on
    two CPU cores.

    Not in the lineage fingerprint (how the stage runs, not what it writes):
    ``cpus_per_worker``, ``checkpoint_every``. ``num_workers`` is in it: the workers
    split the BPR triples, so another count is another trajectory.
    """

    dim: int = Field(32, ge=2, description="embedding size (the paper's DCCF uses 32)")
    layers: int = Field(3, ge=0, description="LightGCN propagation layers")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(2048, ge=1, description="BPR triples per step, summed over workers")
    max_steps_per_epoch: int | None = Field(
        None, ge=1, description="raise the batch so an epoch takes at most this many steps: every "
        "step propagates over the whole graph, so a fixed batch makes an epoch cost grow with the "
        "square of the interactions, a fixed step count linearly (None: batch_size as given)")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate")
    weight_decay: float = Field(
        1e-4, ge=0, description="L2 penalty on the batch's layer-0 embeddings (LightGCN's reg)"
    )
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP over gloo)")
    cpus_per_worker: int = Field(1, ge=1)
    checkpoint_every: int = Field(10, ge=1, description="epochs between checkpoints")


class EmbedConfig(Section):
    """Behaviour embeddings (supplied or LightGCN) and text embeddings of the items.

    Not in the lineage fingerprint (how the stage runs, not what it writes):
    ``text_batch_size``, ``text_actors`` (padding is masked: the same vectors). A
    supplied ``item_embeddings`` file is identified by its path.
    """

    item_embeddings: str | None = Field(
        None, description="user-supplied Parquet (item_id, embedding); skips CF training"
    )
    cf: CFConfig = CFConfig()
    text_model: str = Field("smollm2-135m", description="bundled model name or HF directory")
    text_batch_size: int = Field(256, ge=1)
    text_max_tokens: int = Field(256, ge=1, description="title+description tokens kept per item")
    text_actors: int = Field(1, ge=1, description="Ray Data actors embedding item text")
