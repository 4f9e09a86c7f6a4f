"""pytest setup: GPU tests run only with KVMEM_GPU_TESTS=1 (the GPU machine); elsewhere they are
skipped with a visible reason."""

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("KVMEM_GPU_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with torch/CuPy: run with KVMEM_GPU_TESTS=1 on the GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
