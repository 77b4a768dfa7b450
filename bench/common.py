"""What several benchmarks share: the tiny random Llama and its tokenizer (scale runs measure the
platform, not a 135M-parameter model), the ``/proc`` memory sampler of a stage and its Ray
workers, and the machine line every result records.

Scripts in ``bench/`` put this folder on ``sys.path`` and ``from common import ...``.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "platform") not in sys.path:
    sys.path.insert(0, str(REPO / "platform"))


# ---- the tiny model ------------------------------------------------------------------------------
def tiny_tokenizer(vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on our prompt template (about 400 tokens).

    With SmolLM2's 49k-token vocabulary a 64-wide model spends ~90% of its time on the
    full-vocabulary logits and their log-normaliser (measured: 43 users/s per thread against
    ~420 with this one), which would make the scale run measure the softmax instead of the
    platform (streaming, shards, memory)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from semconv.prompts import sequential_prompt

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([sequential_prompt([[1, 2, 3, 4], [5, 6, 7, 8]])] * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def save_tiny_llama(directory: str | Path, seed: int = 0):
    """A random Llama (hidden 64, 2 layers, tied embeddings) with :func:`tiny_tokenizer`, saved
    with ``save_pretrained`` so it loads by path like any base model (``finetune.base_model``);
    returns the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 tie_word_embeddings=True)).save_pretrained(directory)
    tok.save_pretrained(directory)
    return tok


# ---- memory ----------------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, int]:
    """``VmRSS`` (resident, object-store pages a process maps included), ``RssAnon`` (its own
    heap) and ``RssShmem`` (shared memory: the object store) of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return {k: out.get(k, 0) for k in ("VmRSS", "RssAnon", "RssShmem")}  # none for a zombie


def is_ray_worker(p) -> bool:
    """A Ray worker process (task, actor, Ray Train worker): ``ray::...`` or ``default_worker.py``."""
    cmd = p.cmdline()
    return bool(cmd) and (cmd[0].startswith("ray::") or any("default_worker.py" in c for c in cmd[:3]))


class Memory:
    """Peaks, sampled every ``every`` s from ``/proc``, of the driver's resident memory (RSS) and
    its private part (``RssAnon``), and of the Ray workers among the descendants of ``roots``
    (the driver when not given): the largest single worker and the workers' sum.

    RSS counts the object-store pages a process maps (shared, zero-copy blocks: a driver that
    streams every output block through it maps them all, and every reader of a block counts it
    again), so the private peak is what a process itself holds; ``tree_anon`` is the private
    memory of the driver and every process below the roots together (Ray's own daemons included).
    """

    KEYS = ("driver_rss", "driver_anon", "worker_rss", "worker_anon", "workers_anon_sum", "tree_anon")

    def __init__(self, driver: int | None = None, roots: Sequence[int] = (), every: float = 0.2):
        self.driver = os.getpid() if driver is None else driver
        self.roots = list(roots) or [self.driver]
        self.every = every
        self.peak = dict.fromkeys(self.KEYS, 0)
        self.tree_now = 0  # the last sample's tree_anon
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        seen = {os.getpid()}  # never this (the benchmark's) process
        try:
            s = proc_status(self.driver)
            self._max("driver_rss", s["VmRSS"])
            self._max("driver_anon", s["RssAnon"])
            tree = s["RssAnon"]
            seen.add(self.driver)
        except OSError:
            tree = 0
        workers = 0
        for root in self.roots:
            try:
                procs = psutil.Process(root).children(recursive=True)
            except psutil.Error:
                continue
            for p in procs:
                if p.pid in seen:
                    continue
                seen.add(p.pid)
                try:
                    s = proc_status(p.pid)
                    worker = is_ray_worker(p)
                except (psutil.Error, OSError):
                    continue
                tree += s["RssAnon"]
                if worker:
                    self._max("worker_rss", s["VmRSS"])
                    self._max("worker_anon", s["RssAnon"])
                    workers += s["RssAnon"]
        self._max("workers_anon_sum", workers)
        self._max("tree_anon", tree)
        self.tree_now = tree
        self.samples += 1

    def _run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.every)

    def _max(self, key: str, value: int) -> None:
        self.peak[key] = max(self.peak[key], value)

    def gib(self) -> dict[str, float]:
        return {k: round(v / 2**30, 3) for k, v in self.peak.items()}

    def __enter__(self) -> Memory:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


# ---- the machine -----------------------------------------------------------------------------------
def machine() -> dict[str, object]:
    """What a figure was measured on, and when: CPU model, cores, memory, load average, UTC time."""
    from semconv.hardware import cpu_model

    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
