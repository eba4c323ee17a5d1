"""Health from the operator's side: ship the host checks (sipops.host.health) and read their report.

bundle:  the cron zipapp (the bundle sipops.remote.ship sends, as files)
remote:  run the checks on hosts over SSH
cron:    install or remove the scheduled health check on hosts
"""
