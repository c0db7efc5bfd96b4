"""The thin shell: settings, the Faust app and agents, Redis, Kafka, the CLI and the embedded stack."""
