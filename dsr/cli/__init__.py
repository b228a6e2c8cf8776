"""``dsr``: the operator's command line, one module per family of verbs (:mod:`dsr.cli.main` lists them).

Every verb either succeeds or prints one line saying what is wrong and exits non-zero; no traceback
reaches the operator. Read verbs take ``--json`` for scripts.
"""

from dsr.cli.main import app, main

__all__ = ["app", "main"]
