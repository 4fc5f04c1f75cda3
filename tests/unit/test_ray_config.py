"""launch.ray section and the placement decision (no Ray needed)."""

import pytest
from pydantic import ValidationError

from orchestrator.backends.ray_config import PIN_SHARE, RayPlacement, placement_bundles

NODES = ["env", "agent_0", "agent_1"]


def test_defaults_spread_one_cpu_each():
    bundles, strategy = placement_bundles(NODES, RayPlacement(project_root="/src", ))
    assert strategy == "SPREAD"
    assert bundles == [{"CPU": 1.0}] * 3


@pytest.mark.parametrize("name, ray_name", [("pack", "PACK"), ("strict_spread", "STRICT_SPREAD"), ("strict_pack", "STRICT_PACK")])
def test_strategy_names(name, ray_name):
    assert placement_bundles(NODES, RayPlacement(project_root="/src", strategy=name))[1] == ray_name


def test_pinned_node_asks_for_its_machine_resource():
    bundles, _ = placement_bundles(NODES, RayPlacement(project_root="/src", pin={"agent_1": "10.0.0.2"}, cpus_per_node=0.5))
    assert bundles[0] == {"CPU": 0.5}
    assert bundles[2] == {"CPU": 0.5, "node:10.0.0.2": PIN_SHARE}


def test_unknown_pinned_node_is_named():
    with pytest.raises(ValueError, match="got unknown 'agent_9'"):
        placement_bundles(NODES, RayPlacement(project_root="/src", pin={"agent_9": "10.0.0.2"}))


@pytest.mark.parametrize("address", ["auto", "10.0.0.1:6379", "ray://head:10001"])
def test_addresses_accepted(address):
    assert RayPlacement(project_root="/src", address=address).address == address


@pytest.mark.parametrize("address", ["head", "head:port", ":6379"])
def test_bad_address_says_what_was_expected(address):
    with pytest.raises(ValidationError, match="expected 'auto', 'host:port' or 'ray://host:port'"):
        RayPlacement(project_root="/src", address=address)


def test_unknown_key_and_bad_strategy_refused():
    with pytest.raises(ValidationError):
        RayPlacement(project_root="/src", adress="auto")
    with pytest.raises(ValidationError):
        RayPlacement(project_root="/src", strategy="scatter")


def test_call_timeout_defaults_to_30_s_and_must_be_positive():
    assert RayPlacement(project_root="/opt/parley").call_timeout_s == 30.0
    assert RayPlacement(project_root="/opt/parley", call_timeout_s=8).call_timeout_s == 8.0
    with pytest.raises(ValidationError, match="call_timeout_s"):
        RayPlacement(project_root="/opt/parley", call_timeout_s=0)
