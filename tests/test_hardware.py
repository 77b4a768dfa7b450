"""Native bf16 detection and the precache dtype it implies: auto follows the hardware, true / false force."""

from __future__ import annotations

import pytest

from semconv import hardware
from semconv.config import load_config
from semconv.hardware import FORCE_BF16, FORCE_NO_BF16, inference_dtype, matching_dtype


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
    monkeypatch.delenv(FORCE_BF16, raising=False)
    monkeypatch.setenv(FORCE_NO_BF16, value)
    assert hardware.cpu_bf16_supported() is False
    assert inference_dtype("auto", use_gpu=False).dtype == "float32"
    assert hardware.machine_info()["bf16_native"] is False


@pytest.mark.parametrize("value", ["1", "true"])
def test_env_override_reports_native_bf16_on_any_cpu(monkeypatch, value):
    monkeypatch.delenv(FORCE_NO_BF16, raising=False)
    monkeypatch.setenv(FORCE_BF16, value)
    assert hardware.cpu_bf16_supported() is True
    assert inference_dtype("auto", use_gpu=False).dtype == "bfloat16"
    assert inference_dtype(True, use_gpu=False).warning is None
    assert hardware.machine_info()["bf16_native"] is True


def test_both_env_overrides_set_is_an_error_naming_them(monkeypatch):
    monkeypatch.setenv(FORCE_NO_BF16, "1")
    monkeypatch.setenv(FORCE_BF16, "1")
    with pytest.raises(ValueError, match=f"{FORCE_NO_BF16} and {FORCE_BF16} are both set"):
        hardware.cpu_bf16_supported()


@pytest.mark.parametrize("name", [FORCE_NO_BF16, FORCE_BF16])
@pytest.mark.parametrize("value", ["", "0"])
def test_env_override_unset_or_0_leaves_the_real_detection(monkeypatch, name, value):
    monkeypatch.delenv(FORCE_NO_BF16, raising=False)
    monkeypatch.delenv(FORCE_BF16, raising=False)
    real = hardware.cpu_bf16_supported()
    monkeypatch.setenv(name, value)
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


@pytest.mark.parametrize("native", [True, False], ids=["native", "not native"])
@pytest.mark.parametrize("use_gpu", [False, True], ids=["cpu", "gpu"])
@pytest.mark.parametrize("recorded", ["float32", "bfloat16"])
def test_auto_decodes_in_the_dtype_the_precache_recorded_on_any_machine(cpu, native, use_gpu, recorded):
    """Online generation / a refresh must answer like the precache: ``auto`` takes its dtype,
    whatever this machine would pick; a slow bf16 (CPU without native bf16) is warned about."""
    cpu(native)
    choice = matching_dtype("auto", use_gpu, recorded)
    assert (choice.dtype, choice.reason) == (recorded, f"auto: the precache's dtype ({recorded})")
    slow = recorded == "bfloat16" and not use_gpu and not native
    assert bool(choice.warning) == slow
    if slow:
        assert "28x slower" in choice.warning and "generation.bf16=false" in choice.warning


@pytest.mark.parametrize(("bf16", "machine"), list(CASES), ids=[f"{b}-{m}" for b, m in CASES])
def test_without_a_recorded_dtype_or_with_an_explicit_setting_the_machine_rule_holds(cpu, bf16, machine):
    cpu(machine == "native")
    dtype, reason, warns = CASES[bf16, machine]
    choice = matching_dtype(bf16, machine == "gpu", None, "precache.bf16")
    suffix = " (no precache dtype recorded)" if bf16 == "auto" else ""
    assert (choice.dtype, choice.reason, bool(choice.warning)) == (dtype, reason + suffix, warns)
    if bf16 != "auto":  # explicit: obeyed whatever the precache recorded, named by its setting
        other = matching_dtype(bf16, machine == "gpu", "bfloat16" if dtype == "float32" else "float32")
        assert other.dtype == dtype and other.reason == reason.replace("precache.bf16", "generation.bf16")


def test_an_unknown_recorded_dtype_is_refused():
    with pytest.raises(ValueError, match="recorded dtype 'fp8'"):
        matching_dtype("auto", False, "fp8")
