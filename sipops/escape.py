"""Jinja filters that place a string in a target's syntax (registered once in sipops.render.environment).

The kinds of sipops.kinds keep structured values (names, paths, durations, URIs) free of anything a
target treats specially; these filters are for what is left: free text and command lines.
- `cfg_str`: inside a double-quoted opensips.cfg string (cfg.lex unescapes \\\\ and \\" there).
- `dbtext`: one db_text column (dbt_file.c: \\ escapes \\, :, newline, CR, tab and NUL).
- `cron_argv`, `systemd_argv`: a command line (shell words) so that the program gets exactly the
  words the inventory wrote: shell-quoted for cron (which also treats % specially), quoted by systemd's
  rules for ExecStart (which expands % specifiers and $VARIABLES itself).
"""

from __future__ import annotations

import re
import shlex
from typing import Any


def cfg_str(value: Any) -> str:
    text = str(value)
    if "\x00" in text:
        raise ValueError("a NUL cannot be placed in an opensips.cfg string")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def dbtext(value: Any) -> str:
    text = str(value)
    for raw, escaped in (("\\", "\\\\"), (":", "\\:"), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\x00", "\\0")):
        text = text.replace(raw, escaped)
    return text


def _words(value: Any) -> list[str]:
    try:
        return shlex.split(str(value))
    except ValueError as exc:
        raise ValueError(f"command {value!r}: {exc}") from None


def cron_argv(value: Any) -> str:
    return " ".join(shlex.quote(w) for w in _words(value)).replace("%", "\\%")


def systemd_argv(value: Any) -> str:
    out = []
    for w in _words(value):
        w = w.replace("%", "%%").replace("$", "$$")
        if w == ";":  # a lone ; separates commands in ExecStart
            out.append("\\;")
        elif re.fullmatch(r"[A-Za-z0-9._/+@=,:~-]+", w) and not w.startswith("~"):
            out.append(w)
        else:
            out.append('"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(out)


FILTERS = {
    "cfg_str": cfg_str,
    "dbtext": dbtext,
    "cron_argv": cron_argv,
    "systemd_argv": systemd_argv,
}
