"""Client authentication: license checks, the token endpoint, the proxy's JWTs."""
