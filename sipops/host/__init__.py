"""Everything that runs ON a managed host: standard library only, importing nothing outside sipops.host.

tests/test_host_boundary.py enforces it, so this package can be shipped to a host that has python3 and
nothing else (sipops.remote.runner ships it; the watcher and cron run it from sipops installed there).

agent:          the push/tune agent (facts, stage, validate, swap, rollback, MI queries), one process per phase
tuneprobe:      what tune-tcp reads on the host before and after it applies limits
sip:            the SIP OPTIONS probe (health, the push gate)
safefile:       bounded, checked reads of files (size, type, UTF-8)
users:          the subscriber table of a registrar (sipops users)
crowdsec_creds: CrowdSec machine and bouncer credentials on the host
health/:        health checks, their config, state, formats and the `--local` entry point
monitor/:       the sock_diag scanner, rules, ban backends, journal, CrowdSec link and the watcher
"""
