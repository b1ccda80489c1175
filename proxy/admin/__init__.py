"""The admin face: the vendor API (api.py, OpenAPI in openapi.py, custom hostnames in hostnames.py)
and the web portal (portal/), over team-scoped operations (service.py)."""
