"""A gateway with tenants: the client passes its bearer token through `metadata`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Gateway, math_candidate, math_expected, start_gateway, write_config

from rewardfleet import RewardClient, RewardfleetError

TOKEN = "python-tenant-token-42"


@pytest.fixture(scope="module")
def tenant_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    d: Path = tmp_path_factory.mktemp("tenants")
    (d / "trainer.token").write_text(TOKEN + "\n")
    extra = '[[tenant]]\nname = "trainer"\ntoken_file = "trainer.token"\nprofiles = ["math"]\n'
    gw = start_gateway(write_config(d / "fleet.toml", extra=extra), log=d / "gateway.log")
    yield gw
    gw.stop()


def test_a_token_in_metadata_is_served_and_none_is_refused(tenant_gateway: Gateway) -> None:
    candidates = [math_candidate(i) for i in range(6)]
    with RewardClient(tenant_gateway.grpc, metadata={"authorization": f"Bearer {TOKEN}"}) as client:
        rewards = client.score(candidates)
        assert [r.value for r in rewards] == [math_expected(i) for i in range(6)]
        with pytest.raises(RewardfleetError, match="PERMISSION_DENIED"):
            client.score(candidates, profile="ranked")
    with RewardClient(tenant_gateway.grpc) as anonymous, pytest.raises(RewardfleetError, match="UNAUTHENTICATED"):
        anonymous.score(candidates)
