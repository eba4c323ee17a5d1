"""The health zipapp, `python3 sipops-health.pyz --local ...`, installed by `sipops cron install` on hosts
without sipops: the same bundle `sipops health HOST` ships (sipops.remote.ship), as files in a zip."""

from __future__ import annotations

from sipops.remote import ship

MODULE = "sipops.host.health.main"


def zipapp_bytes() -> bytes:
    """`sipops-health.pyz`: the checks' modules and a __main__ running them; deterministic bytes."""
    return ship.zipapp_bytes(MODULE, "main")
