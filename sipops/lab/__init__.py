"""Throwaway Debian hosts on this machine (systemd-nspawn, network namespaces, sshd) to rehearse on.

Modules: state (names, state file), net (route, bridge, namespaces), rootfs (base cache, layers, keys),
hosts (nspawn boot/stop, SSH wait), invfile (inventory.yaml, known_hosts), access (ssh/exec argv),
lifecycle (up/down/status/destroy), cli (Typer commands).
"""
