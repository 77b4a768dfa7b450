"""Shared fixtures: a local Ray session, and tiny causal LMs built from a config in the test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# the tests' S3 server (s3_server) takes any credentials; set before Ray starts, so workers see them
os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

REPO = Path(__file__).resolve().parents[1]
DEMO_DATA = REPO / "data" / "Scientific"

_CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.",
    "### Instruction: ### Response:",
    "The user has interacted with items in chronological order. Can you predict the next "
    "possible item that the user may expect?",
    "title description brand category relay capacitor kit torque thermometer glove tape "
    "lab glass bottle filter pump sensor battery meter digital steel plastic",
]


def build_tiny_lm(path: Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random ``LlamaForCausalLM`` + a byte-level BPE tokenizer to ``path``.

    Real Hugging Face classes end to end, so ``from_pretrained(path)`` code paths are exercised
    without any download.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(hf_tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id,
        pad_token_id=hf_tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + tokenizer saved as a Hugging Face directory."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm") / "model")


@pytest.fixture
def one_thread():
    """One torch and one faiss (OpenMP) thread. On a small CPU shared with other processes,
    OpenMP threads spinning against them make tiny forwards, sparse ops and k-means 50-100x
    slower. Opted into (autouse) by the embed, tokenize and inference test directories."""
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


@pytest.fixture
def simulate_cpu(monkeypatch):
    """``simulate_cpu(native_bf16)``: this process's ``semconv.hardware`` answers as a CPU with (or
    without) native bf16 would, whatever this machine has, so a test covers both kinds of CPU
    (torch runs bf16 on any CPU, slower without native kernels). Every dtype rule looks the
    answer up through ``semconv.hardware.cpu_bf16_supported`` at call time."""
    from semconv import hardware

    def set_native(native_bf16: bool) -> None:
        monkeypatch.setattr(hardware, "cpu_bf16_supported", lambda: native_bf16)

    return set_native


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 HTTP API on 127.0.0.1 (moto's standalone server); ``s3_server(path)`` is an
    ``s3://`` URI that any ``pyarrow.fs`` user (Ray workers included) resolves to it."""
    import uuid

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"endpoint_override=http://{host}:{port}&scheme=http&region=us-east-1"
    bucket = f"semconv-{uuid.uuid4().hex[:8]}"
    pafs.FileSystem.from_uri(f"s3://{bucket}?{query}&allow_bucket_creation=true")[0].create_dir(bucket)

    def uri(path: str) -> str:
        return f"s3://{bucket}/{path.strip('/')}?{query}"

    yield uri
    server.stop()


@pytest.fixture(scope="session")
def _ray_session_teardown():
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session_teardown):
    """A local Ray with 2 CPUs, started once and shared; restarted for the next module if a
    test shut it down (e.g. one that needed a multi-node ``ray.cluster_utils.Cluster``)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    yield ray
