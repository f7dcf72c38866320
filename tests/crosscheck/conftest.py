"""Every test in this folder is a crosscheck against a PyTorch peer."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "crosscheck" in str(item.fspath):
            item.add_marker(pytest.mark.crosscheck)
