"""Shared fixtures: a real anvil chain on 127.0.0.1 and the embedded base model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests use local model files only

import pytest

from chain.devchain import Anvil


@pytest.fixture(scope="session")
def anvil_session():
    """One anvil for the whole session; tests that change chain state should use `anvil`."""
    with Anvil() as node:
        yield node


@pytest.fixture
def anvil(anvil_session):
    """The session's anvil, rolled back to a snapshot after each test."""
    snap = anvil_session.rpc("evm_snapshot")
    yield anvil_session
    anvil_session.rpc("evm_revert", [snap])


@pytest.fixture
def fresh_anvil():
    """A private anvil for tests that need their own chain (reorgs, restarts)."""
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def base_model():
    """The embedded SmolLM2-135M-Instruct on CPU, fp32 (converted once, then cached)."""
    import torch

    from inference.base_model import load_base_model

    torch.manual_seed(0)
    return load_base_model(device="cpu")
