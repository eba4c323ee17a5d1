"""Health checks of an OpenSIPS host, for cron, Nagios/Icinga and Prometheus.

model:    Status, Metric, CheckResult, Report
config:   HealthConfig (thresholds, sockets, paths) from /etc/sipops/health.json or the inventory
sources:  what the checks read from the host (/proc, MI over HTTP, SIP, systemctl), injectable
logscan:  the OpenSIPS log cursor (inode + offset), safe across rotation
checks:   one function per check; runner: runs them, keeps state, fires the alert command
formats:  text, JSON, Nagios plugin output, Prometheus text exposition
main:     the `--local` entry point (argparse, standard library only)
"""
