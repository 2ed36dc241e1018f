"""The call-policy document in its own package, still reachable from the SDK."""

from __future__ import annotations

import pytest

from crossway.core.errors import InvalidArgument
from crossway.sdk import policies as sdk_policies
from crossway.traffic import policy


def test_sdk_names_are_the_traffic_documents() -> None:
    for name in ("CallPolicy", "RetrySpec", "BulkheadSpec", "encode_policy", "POLICY_PREFIX"):
        assert getattr(sdk_policies, name) is getattr(policy, name)


def test_a_bad_document_names_its_field() -> None:
    with pytest.raises(InvalidArgument) as caught:
        policy.decode_policy(b'{"bulkhead": {"max_concurrent": 0}}')
    assert caught.value.details["field"] == "$.bulkhead.max_concurrent"


def test_round_trip_keeps_only_what_differs() -> None:
    doc = policy.CallPolicy(bulkhead=policy.BulkheadSpec(max_concurrent=3))
    assert policy.encode_policy(doc) == b'{"bulkhead":{"max_concurrent":3}}'
    assert policy.decode_policy(policy.encode_policy(doc)) == doc
