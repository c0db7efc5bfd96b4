"""Tools around the worker: demo, bench, eval, traffic generator, producer, embedded stack."""
