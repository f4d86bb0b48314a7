"""Suite-wide settings: deterministic and light on the 2-core CI machine, and strict about dev dependencies in CI.

With `CI=true` a test (or a whole module) that `pytest.importorskip`s a package fails instead of skipping: every
reference package the suite needs is in the `dev` extra, so a missing one is a broken set-up, not a reason to
run fewer tests.
"""

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STRICT = os.environ.get("CI", "").lower() == "true"
_MISSING = "could not import"  # the text of every pytest.importorskip skip


def _fail_missing_dependency(report) -> None:
    if STRICT and report.skipped and _MISSING in str(report.longrepr):
        report.outcome = "failed"
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"missing dev dependency in CI (install with `pip install -e .[dev]`): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_missing_dependency(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_missing_dependency(outcome.get_result())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
