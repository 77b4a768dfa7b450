"""Native bf16 detection and the precache dtype it implies: auto follows the hardware, true / false force."""

from __future__ import annotations

import pytest

from semconv import hardware
from semconv.config import load_config
from semconv.hardware import FORCE_NO_BF16, inference_dtype


@pytest.fixture
def cpu(monkeypatch):
    """Set whether this CPU has native bf16, without touching the real detection."""
    def set_native(native: bool) -> None:
        monkeypatch.setattr(hardware, "cpu_bf16_supported", lambda: native)
    return set_native


# (precache.bf16, hardware) -> (dtype, reason, warns); "gpu" runs on a CPU without native bf16
CASES = {
    ("auto", "native"): ("bfloat16", "auto: this CPU has native bf16", False),
    ("auto", "not native"): ("float32", "auto: this CPU has no native bf16", False),
    ("auto", "gpu"): ("bfloat16", "auto: GPU", False),
    (True, "native"): ("bfloat16", "precache.bf16=true", False),
    (True, "not native"): ("bfloat16", "precache.bf16=true", True),
    (True, "gpu"): ("bfloat16", "precache.bf16=true", False),
    (False, "native"): ("float32", "precache.bf16=false", False),
    (False, "not native"): ("float32", "precache.bf16=false", False),
    (False, "gpu"): ("float32", "precache.bf16=false", False),
}


@pytest.mark.parametrize(("bf16", "machine"), list(CASES), ids=[f"{b}-{m}" for b, m in CASES])
def test_inference_dtype(cpu, bf16, machine):
    cpu(machine == "native")
    choice = inference_dtype(bf16, use_gpu=machine == "gpu")
    dtype, reason, warns = CASES[bf16, machine]
    assert (choice.dtype, choice.reason) == (dtype, reason)
    assert bool(choice.warning) == warns


def test_forcing_bf16_on_a_cpu_without_it_names_the_slowdown_and_the_fix(cpu):
    cpu(False)
    warning = inference_dtype(True, use_gpu=False).warning
    assert "without native bf16" in warning and "28x slower than float32" in warning
    assert "precache.bf16=auto" in warning


def test_a_value_other_than_true_false_auto_is_an_error():
    with pytest.raises(ValueError, match="precache.bf16 must be true, false or 'auto'"):
        inference_dtype("yes", use_gpu=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_env_override_reports_no_native_bf16(monkeypatch, value):
    monkeypatch.setenv(FORCE_NO_BF16, value)
    assert hardware.cpu_bf16_supported() is False
    assert inference_dtype("auto", use_gpu=False).dtype == "float32"
    assert hardware.machine_info()["bf16_native"] is False


@pytest.mark.parametrize("value", ["", "0"])
def test_env_override_unset_or_0_leaves_the_real_detection(monkeypatch, value):
    monkeypatch.delenv(FORCE_NO_BF16, raising=False)
    real = hardware.cpu_bf16_supported()
    monkeypatch.setenv(FORCE_NO_BF16, value)
    assert hardware.cpu_bf16_supported() is real


def test_precache_bf16_defaults_to_auto_and_takes_true_false():
    assert load_config(None).precache.bf16 == "auto"
    assert load_config(None, ["precache.bf16=true"]).precache.bf16 is True
    assert load_config(None, ["precache.bf16=false"]).precache.bf16 is False
    assert load_config(None, ["precache.bf16=auto"]).precache.bf16 == "auto"


def test_machine_info_names_the_cpu():
    info = hardware.machine_info()
    assert info["cpu"] and info["cores"] >= 1 and info["torch_threads"] >= 1
    assert isinstance(info["bf16_native"], bool)


def test_precache_bf16_rejects_other_words():
    from semconv.config import ConfigError

    with pytest.raises(ConfigError, match="precache.bf16"):
        load_config(None, ["precache.bf16=maybe"])
