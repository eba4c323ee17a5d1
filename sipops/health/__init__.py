"""Health from the operator's side: ship the host checks (sipops.host.health) and read their report.

bundle:  the host modules as one script for `python3 -` and as a zipapp for cron
remote:  run the checks on hosts over SSH
cron:    install or remove the scheduled health check on hosts
"""
