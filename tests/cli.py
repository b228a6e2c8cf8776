"""The `dsr` CLI run in the test's own process, answering as :func:`subprocess.run` would.

A new `dsr` process spends one to two seconds of CPU importing the engine (Temporal's SDK, SQLAlchemy,
Alembic) before it parses its arguments, several times that on a loaded machine; in the test process they
are imported already. Tests of what a verb says and does (its output, its one-line errors, its exit code)
run it here; tests of the installed entry point itself (`dsr --version`, `dsr up`) still start the process.

What differs from a process: the environment is the test's, with ``env`` laid over it for the call (a value
of None removes the variable); an exception the CLI lets escape is not printed as a traceback on stderr but
re-raised here, so a test expecting one line on stderr fails all the same.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from typer.testing import CliRunner

from dsr.cli.main import app


def run_dsr(args: list[str], env: Mapping[str, str | None]) -> subprocess.CompletedProcess[str]:
    """``dsr *args`` in this process, with ``env`` over the environment; stdout and stderr as text."""
    result = CliRunner().invoke(app, args, env=dict(env), catch_exceptions=False)
    return subprocess.CompletedProcess(["dsr", *args], result.exit_code, result.stdout, result.stderr)
