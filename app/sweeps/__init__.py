"""Sweeps on Optuna: the search space (space.py), Optuna's storage in the project's database (storage.py),
collapse-aware pruning (pruner.py) and the server's driver that asks, queues and tells trials (driver.py).

A trial is an ordinary queued run (`Run.sweep_id`, `Run.trial_number`): any worker of any machine trains it.
The sweep rows and their reads live in app/storage/sweeps.py.
"""
