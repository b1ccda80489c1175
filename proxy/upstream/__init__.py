"""Talking to vendor registries: auth dance, token cache, redirects, streaming."""
