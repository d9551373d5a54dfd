"""The control tests' real servers (control service, job runner, a tiny data root), reused."""
from tests.control.conftest import browser, control, data_root, runner  # noqa: F401
from tests.control.test_runner import shared_root, stack  # noqa: F401
