"""The vendor side on the admin listener: JSON API (api.py) over team-scoped operations (service.py)."""
