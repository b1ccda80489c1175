"""The proxy face: the pull routes, relay, catalog, anonymous path and name-to-registry resolution."""
