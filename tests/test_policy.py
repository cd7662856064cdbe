from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.policy import FP32_BITS, LayerChoice, Policy

choices = st.builds(
    LayerChoice,
    sparsity=st.floats(0.0, 0.99),
    bits=st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, FP32_BITS]),
    keep=st.floats(0.05, 1.0),
    quantizer=st.sampled_from(["linear", "kmeans"]),
    rank=st.floats(0.01, 1.0),
)
policies = st.builds(
    Policy.from_choices,
    st.dictionaries(st.from_regex(r"[a-z]{1,6}(\.[0-9])?", fullmatch=True), choices, max_size=6),
    st.sampled_from(["magnitude", "obd", "taylor"]),
    st.sampled_from(["l1", "l2", "bn", "taylor"]),
    st.sampled_from([None, "torch", "torch-int8", "onnxruntime-int8"]),
)


@given(policies)
def test_json_round_trip_is_exact(policy: Policy) -> None:
    again = Policy.from_json(policy.to_json())
    assert again == policy
    assert again.digest() == policy.digest()
    assert hash(again) == hash(policy)


def test_digest_is_order_independent_and_sensitive_to_every_choice() -> None:
    a = Policy.from_choices({"fc1": LayerChoice(0.5, 4), "fc2": LayerChoice(0.1, 8)})
    b = Policy.from_choices({"fc2": LayerChoice(0.1, 8), "fc1": LayerChoice(0.5, 4)})
    assert a.digest() == b.digest()
    for changed in (LayerChoice(0.55, 4), LayerChoice(0.5, 5), LayerChoice(0.5, 4, keep=0.5)):
        c = Policy.from_choices({"fc1": changed, "fc2": LayerChoice(0.1, 8)})
        assert c.digest() != a.digest()


def test_digest_is_stable_across_processes() -> None:
    policy = Policy.from_choices({"conv": LayerChoice(0.25, 3, 0.5)})
    code = "from core.policy import *; print(Policy.from_choices({'conv': LayerChoice(0.25, 3, 0.5)}).digest())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == policy.digest()


def test_fields_added_later_keep_earlier_digests() -> None:
    earlier = '{"layers":{"fc":{"bits":4,"keep":1.0,"sparsity":0.5}},"version":1}'
    policy = Policy.from_json(earlier)
    assert policy["fc"].quantizer == "linear"
    assert policy.to_json() == earlier
    kmeans = Policy.from_choices({"fc": LayerChoice(0.5, 4, quantizer="kmeans")})
    assert kmeans.digest() != policy.digest()
    assert LayerChoice(0.5, 32, quantizer="kmeans") == LayerChoice(0.5, 32)
    assert Policy.from_json(earlier).saliency == "magnitude" and policy["fc"].rank == 1.0
    low_rank = Policy.from_choices({"fc": LayerChoice(0.5, 4, rank=0.5)})
    obd = Policy.from_choices({"fc": LayerChoice(0.5, 4)}, saliency="obd")
    bn = Policy.from_choices({"fc": LayerChoice(0.5, 4)}, channel_importance="bn")
    assert len({policy.digest(), low_rank.digest(), obd.digest(), bn.digest()}) == 4
    assert Policy.from_json(earlier).channel_importance == "l1"


def test_runtime_round_trips_and_is_left_out_when_unset() -> None:
    """A policy without a runtime keeps the digest it had before runtimes were searched (pinned here)."""
    choices = {"conv1": LayerChoice(0.5, 4, keep=0.75), "fc1": LayerChoice(bits=8, quantizer="kmeans", rank=0.5)}
    unset = Policy.from_choices(choices, "taylor", "l2")
    assert unset.runtime is None and "runtime" not in unset.to_dict()
    assert unset.digest() == "5a76169bebd6f1b3" and Policy().digest() == "8be343dfa866cb24"
    int8 = Policy.from_choices(choices, "taylor", "l2", runtime="torch-int8")
    assert int8.to_dict()["runtime"] == "torch-int8" and int8.digest() != unset.digest()
    assert Policy.from_json(int8.to_json()) == int8 and Policy.from_json(unset.to_json()).runtime is None
    for name in ("", 3):
        with pytest.raises(ValueError, match="runtime must be a non-empty string"):
            Policy.from_choices(choices, runtime=name)  # type: ignore[arg-type]


def test_json_carries_a_version_tag_and_rejects_others() -> None:
    data = json.loads(Policy.from_choices({"a": LayerChoice()}).to_json())
    assert data["version"] == 1
    data["version"] = 99
    with pytest.raises(ValueError, match="version"):
        Policy.from_dict(data)


@pytest.mark.parametrize(
    "kwargs",
    [{"sparsity": -0.1}, {"sparsity": 1.0}, {"bits": 0}, {"bits": 9}, {"keep": 0.0}, {"quantizer": ""},
     {"quantizer": None}, {"rank": 0.0}],
)
def test_invalid_choices_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LayerChoice(**kwargs)


@pytest.mark.parametrize("name", ["", 3, None])
def test_criteria_must_be_names(name: object) -> None:
    """Only the type is checked here; unknown names are rejected by the registries in ``methods``
    (``check_saliency``, ``check_channel_importance``; see the conformance tests)."""
    with pytest.raises(ValueError, match="saliency must be a non-empty string"):
        Policy.from_choices({"a": LayerChoice()}, saliency=name)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="channel_importance must be a non-empty string"):
        Policy.from_choices({"a": LayerChoice()}, channel_importance=name)  # type: ignore[arg-type]


def test_policy_is_frozen_and_unlisted_layers_are_uncompressed() -> None:
    policy = Policy.from_choices({"a": LayerChoice(0.5, 4)})
    with pytest.raises(AttributeError):
        policy.layers = ()  # type: ignore[misc]
    assert policy["missing"] == LayerChoice()
    assert policy["a"].quantized and not policy["missing"].quantized


def test_leaf_module_does_not_import_torch() -> None:
    code = "import sys, core.policy, core.budget, core.space, search.pareto; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
