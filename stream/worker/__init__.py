"""The worker process: the Faust app, its agents and timers, effects, trainer and status."""
