"""``dsr``: the operator's command line, one module per family of verbs (:mod:`dsr.cli.main` lists them).

Every verb either succeeds or prints one line saying what is wrong and exits non-zero; no traceback
reaches the operator. Read verbs take ``--json`` for scripts.
"""

from typing import TYPE_CHECKING, Any

from dsr.cli.main import main

if TYPE_CHECKING:
    from dsr.cli.main import app

__all__ = ["app", "main"]


def __getattr__(name: str) -> Any:
    # The whole app only when asked for: the `dsr` entry point builds the verb it runs (dsr.cli.main.main).
    if name == "app":
        from importlib import import_module

        return import_module("dsr.cli.main").app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
