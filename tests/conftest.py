"""Shared test set-up: 8 fake CPU devices for every test, and the shared real data.

`XLA_FLAGS` must be set before jax is imported anywhere, so this runs first.
"""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(
    os.environ.get("ALIGNER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_path(*parts: str) -> pathlib.Path:
  """A path under ../shared/data; skips the calling test with the reason when it is absent."""
  path = SHARED_DATA.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"real data not found at {path} (expected ../shared/data beside the repo; "
                "set ALIGNER_SHARED_DATA to point elsewhere)")
  return path


@pytest.fixture
def scifact_dir() -> pathlib.Path:
  return shared_path("beir", "scifact")


@pytest.fixture
def cisi_dir() -> pathlib.Path:
  return shared_path("beir", "cisi")


@pytest.fixture
def t5_tokenizer_json() -> pathlib.Path:
  return shared_path("tokenizers", "t5_v1_1", "tokenizer.json")


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: longer than a few seconds; run by `make test-slow`")
  config.addinivalue_line("markers", "tpu: needs a TPU; never selected on CPU")
