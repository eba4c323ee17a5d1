"""Host-side monitoring and protection: connection scanner, rules, ban backend, journal, watcher.

scan:      sock_diag scanner -> ConnectionTable (see sipops.host.monitor.scan for the result types)
sockdiag:  the raw NETLINK_SOCK_DIAG reader and SOCK_DESTROY (stdlib only)
procnet:   /proc/net/tcp fallback, /proc/net/netstat counters, listening sockets' processes

The scanner modules use the standard library only (psutil is optional), so that they can be
shipped to a host that does not have sipops installed (sipops.remote.ship, `sipops conns HOST`).
"""
