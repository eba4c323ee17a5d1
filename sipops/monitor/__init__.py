"""Connections and bans from the operator's side: run the host scanner (sipops.host.monitor) over SSH.

remote:  ship the scanner modules to a host and read its JSON report
"""
