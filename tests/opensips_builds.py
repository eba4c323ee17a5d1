"""The OpenSIPS installs the needs_opensips tests run against: every prefix in $SIPOPS_OPENSIPS_PREFIX.

The variable holds one or more install prefixes separated by ':' (CI builds 3.6.8 and 3.4.18 from the
release tarballs with .ci/opensips and sets both). Each needs_opensips test runs once per prefix, its id
the release (e.g. `[3.6.8]`); without the variable the tests are skipped with the reason shown.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

SKIP_REASON = (
    "SIPOPS_OPENSIPS_PREFIX is not set (OpenSIPS install prefixes separated by ':';"
    " .ci/opensips TARBALL builds one from a release tarball and prints its prefix)"
)


def prefixes() -> list[Path]:
    return [Path(p) for p in os.environ.get("SIPOPS_OPENSIPS_PREFIX", "").split(":") if p.strip()]


@functools.cache
def release(prefix: Path) -> str:
    """The full release of the install, e.g. 3.6.8 (`opensips -V`)."""
    binary = prefix / "sbin/opensips"
    if not binary.is_file():
        raise RuntimeError(f"SIPOPS_OPENSIPS_PREFIX names {prefix}, which has no sbin/opensips")
    out = subprocess.run([str(binary), "-V"], capture_output=True, text=True, check=True, timeout=30).stdout
    m = re.search(r"opensips (\d+\.\d+\.\d+)", out)
    if not m:
        raise RuntimeError(f"{binary} -V printed no version: {out[:200]!r}")
    return m.group(1)


def line(prefix: Path) -> str:
    """The LTS line sipops renders for: 3.6 or 3.4."""
    return release(prefix).rsplit(".", 1)[0]


def params() -> list[Any]:
    """pytest params, one per install; a single skipped one when there is none."""
    found = prefixes()
    if not found:
        return [pytest.param(None, marks=pytest.mark.skip(reason=SKIP_REASON), id="no-opensips")]
    return [pytest.param(p, id=release(p)) for p in found]
