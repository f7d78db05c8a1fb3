"""Shared test set-up: no network, deterministic threads, and the repository root as a fixture."""
import os

for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "TRL_EXPERIMENTAL_SILENCE": "1"}.items():
    os.environ.setdefault(k, v)

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    "The repository root (holds settings.ini, nbs/, data/)."
    return ROOT
