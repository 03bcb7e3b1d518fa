import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/toy.py and friends

# Under pytest-xdist (pyproject's addopts: 2 worker processes, whole files per worker, so a module's
# shared fixture is built once) each worker takes one thread; run with -n 0, up to two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits():
    from nextscale.data import load_digits
    return load_digits(side=16, seed=0)


def pytest_collection_modifyitems(items):
    """Mark the saved-file tests (modules that read tests/data/ through golden.fixture) ``golden``: .ci/run
    runs them again under other CPU kernels' rounding."""
    import golden
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and any(v is golden.fixture or v is golden for v in vars(module).values()):
            item.add_marker("golden")
