"""Request builders, kept importable under their old name: they live in tests/helpers.py."""

from tests.helpers import request, shell, step

__all__ = ["request", "shell", "step"]
