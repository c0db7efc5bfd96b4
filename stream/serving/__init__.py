"""Serving: the HTTP read API and dashboard, segment reports, webhook triggers."""
