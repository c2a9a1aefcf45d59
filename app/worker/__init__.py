"""Workers: claiming and training runs with a heartbeat (claim), the supervised pool of worker processes
(pool), and the statistics writer (sink)."""
