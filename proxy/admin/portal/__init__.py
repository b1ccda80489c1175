"""The vendor web portal, `/portal/` on the admin listener (never the proxy listener).

Server-rendered (aiohttp-jinja2), no JavaScript, one stylesheet. Log in with
a team API token; every page then works on that team alone through
VendorService, the layer the JSON API also calls. Sessions and CSRF:
proxy.admin.portal.session.
"""

from __future__ import annotations

from proxy.admin.portal.views import install

__all__ = ["install"]
