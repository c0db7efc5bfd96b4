"""The pure core: events, features, clustering and segments. River and the standard library only."""
