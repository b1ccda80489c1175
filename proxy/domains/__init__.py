"""Custom domains: ownership verification, host routing, TLS certificates by SNI."""
