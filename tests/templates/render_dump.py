"""A pytest plugin that records every reply a test run renders, to prove a template refactoring byte-identical.

``DUMP_TO=before.json pytest -p tests.templates.render_dump tests/templates/test_replies.py`` on the old tree, the
same with ``after.json`` on the new one, then compare the two files: each key is a test and the order of its call,
each value the repr of the :class:`templates.RenderedNotice` (subject, text and HTML, byte for byte).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_renders: dict[str, str] = {}
_calls: dict[str, int] = {}
_current = [""]


def pytest_runtest_setup(item: Any) -> None:
    _current[0] = item.nodeid


def _recording(original: Any) -> Any:
    def render(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        n = _calls.get(_current[0], 0)
        _calls[_current[0]] = n + 1
        _renders[f"{_current[0]}#{n}"] = repr(result)
        return result

    return render


def pytest_collection_finish(session: Any) -> None:
    import dsr.mail.replies as replies

    original = replies.render_reply
    wrapped = _recording(original)
    for module in list(sys.modules.values()):
        if getattr(module, "render_reply", None) is original:
            setattr(module, "render_reply", wrapped)  # noqa: B010 - any module that imported it


def pytest_unconfigure(config: Any) -> None:
    target = os.environ.get("DUMP_TO")
    if target:
        with open(target, "w", encoding="utf-8") as out:
            json.dump(_renders, out, sort_keys=True, ensure_ascii=False)
