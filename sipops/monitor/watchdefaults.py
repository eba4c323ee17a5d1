"""The watcher's settings where no watch.json is given: the common role's defaults (their one declaration,
roles/common.yaml), for `sipops watch` run by hand and for tests. On a managed host the service reads
/etc/sipops/watch.json, rendered from the same variables with the inventory's values."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sipops.host.monitor import watchconf
from sipops.host.monitor.rules import Thresholds
from sipops.roles import BASE_ROLE, RoleLibrary

# Not taken from the role for a run by hand: the role's ports and log are the proxy's (the inventory
# resolves them into watch.json); by hand, every port is watched and no log is followed unless asked.
_BY_HAND: dict[str, Any] = {"watch_ports": [], "watch_allow": [], "log_file": None}


def role_defaults() -> dict[str, Any]:
    """{variable: default} of the common role for every key of watch.json (watchconf.VARS)."""
    role = RoleLibrary(None).load(BASE_ROLE)
    out: dict[str, Any] = {}
    for key in watchconf.VARS:
        if key in _BY_HAND:
            out[key] = _BY_HAND[key]
        else:
            out[key] = role.vars[key].default
    return out


def role_settings() -> watchconf.WatchSettings:
    return watchconf.settings(role_defaults(), "the common role's defaults")


def role_thresholds(**fields: Any) -> Thresholds:
    """The role's default thresholds with some fields replaced (tests, benches)."""
    return replace(role_settings().thresholds, **fields)
