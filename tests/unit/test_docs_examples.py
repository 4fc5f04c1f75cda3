"""The examples the docs include (docs/examples/) work as the guide says."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from pettingzoo.test import parallel_api_test

from orchestrator.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.fixture
def meet(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.delitem(sys.modules, "meet", raising=False)
    return importlib.import_module("meet")


def test_the_guide_s_own_environment_passes_pettingzoo_s_parallel_api_test(meet) -> None:
    parallel_api_test(meet.parallel_env(), num_cycles=100)


def test_the_guide_s_config_for_it_is_valid_and_fits_it(meet) -> None:
    config = load_config(EXAMPLES / "meet.yaml")
    env = meet.parallel_env(**config.env.kwargs)
    assert config.env.name == "meet:parallel_env"
    assert config.agents.count == len(env.possible_agents)
