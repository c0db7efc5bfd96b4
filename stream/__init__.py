"""The thin shell: settings, Faust app and agents, Redis, Kafka, CLI and the embedded stack."""
