"""Workers: claiming and training runs (claim), the lease every write of a worker carries and its heartbeat
(lease), NOTIFY wake-ups (wakeup), the supervised pool of worker processes (pool), health reports across hosts
(hosts), and the statistics writer (sink)."""
