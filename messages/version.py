"""The version of moe2, written here once: pyproject.toml reads it (``[tool.setuptools.dynamic]``)
and the agent, the controller and the ``moe2`` package import it. The message contract has its
own ``SCHEMA_VERSION`` (messages/base.py)."""

__version__ = "0.1.0"
