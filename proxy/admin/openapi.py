"""The OpenAPI 3.1 document of the vendor API, served at /vendor/v3/openapi.json.

Written by hand next to the handlers (api.py) and checked by the tests: the
document validates, and every answer of every route matches its schema.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from proxy import __version__
from proxy.admin.service import LICENSE_TYPES, shown_destinations
from proxy.upstream.providers import PROVIDERS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(tp: str, **kw: Any) -> dict[str, Any]:
    return {"type": [tp, "null"], **kw}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        out["required"] = required
    return out


def _wrap(key: str, schema: dict[str, Any]) -> dict[str, Any]:
    return _obj({key: schema}, [key])


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "Invalid request; `errors` lists every problem"),
    "401": _json(_ref("Error"), "Missing or unknown API token"),
    "404": _json(_ref("Error"), "Unknown, or belongs to another team"),
}


def _op(
    summary: str,
    responses: dict[str, Any],
    body: str | None = None,
    params: list[Any] | None = None,
    errors: tuple[str, ...] = ("400", "401", "404"),
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **{e: ERRORS[e] for e in errors}}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = params
    return op


def _with_csv(response: dict[str, Any]) -> dict[str, Any]:
    """The same answer, also offered as CSV (`?format=csv` or `Accept: text/csv`)."""
    return {**response, "content": {**response["content"], "text/csv": {"schema": {"type": "string"}}}}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _query(name: str, description: str, fmt: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if fmt:
        schema["format"] = fmt
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


# The schemas read as a table (one property per line, as in the OpenAPI text): not reformatted.
# fmt: off
_TIME = {"type": "string", "format": "date-time"}
_THRESHOLD = _nullable("integer", minimum=1, description="Monthly egress (bytes served) past which the team's "
                       "webhook is told, once a month (event egress.threshold_reached); null: none")
_CONFLICT = {"409": _json(_ref("Error"), "The slug is taken")}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"message": {"type": "string"}, "errors": {"type": "array", "items": {"type": "string"}}},
                  ["message"]),
    "ExternalRegistry": _obj(
        {
            "slug": {"type": "string"},
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "endpoint": {"type": "string"},
            "url": {"type": "string"},
            "insecure": {"type": "boolean"},
            "authType": {"type": "string", "enum": ["password", "token", "accesskey", "serviceaccount", "anonymous"]},
            "username": _nullable("string", description="For ECR, the access key id. Never a password."),
            "appIds": {"type": "array", "items": {"type": "string"}},
            "appSlugs": {"type": "array", "items": {"type": "string"}},
            "allowAnonymous": {"type": "boolean"},
            "anonymousRepositories": {"type": "array", "items": {"type": "string"}},
            "lastUsedAt": _nullable("string", format="date-time"),
            # and each provider's destination fields (document())
        },
        ["slug", "provider", "endpoint", "url", "insecure", "authType", "username", "appIds", "appSlugs",
         "allowAnonymous", "anonymousRepositories", "lastUsedAt"],
    ),
    "ExternalRegistryCreate": _obj(
        {
            "provider": {"type": "string", "enum": list(PROVIDERS)},
            "endpoint": {"type": "string", "description": "Host as written in image references; defaults for "
                         "dockerhub (docker.io), ghcr, quay, gcr"},
            "slug": {"type": "string", "description": "Name in pull paths; defaults to the endpoint"},
            "authType": {"type": "string"},
            "appIds": {"type": "array", "items": {"type": "string"}, "description": "App ids or slugs; "
                       "empty: every app of the team"},
            "url": {"type": "string", "description": "Where to reach it; default https://<endpoint>"},
            "insecure": {"type": "boolean", "description": "Required for an http:// url"},
            "skipValidation": {"type": "boolean"},
            "image": {"type": "string", "description": "Image to validate the credentials with"},
            "allowAnonymous": {"type": "boolean", "description": "Serve it on /v2/anonymous/... without a "
                               "license (rate-limited per client address); default false"},
            "anonymousRepositories": {"type": "array", "items": {"type": "string"}, "description": "Repository "
                                      "patterns (fnmatch, e.g. vendor/*) served anonymously; empty: every "
                                      "repository its apps' image allowlists allow"},
        },
        ["provider"],
    ),
    "ExternalRegistryTest": _obj({"endpoint": {"type": "string"}, "image": {"type": "string"}},
                                 ["endpoint", "image"]),
    "ExternalRegistryTestResult": _obj(
        {"status": {"type": "integer", "description": "The upstream's HTTP status; 0 when no answer"},
         "ok": {"type": "boolean"}, "reason": {"type": "string"}},
        ["status", "ok", "reason"],
    ),
    "App": _obj(
        {"id": {"type": "string"}, "slug": {"type": "string"}, "name": {"type": "string"},
         "imageAllowlist": {"type": "array", "items": {"type": "string"}},
         "kotsPublicKey": _nullable("string"),
         "channels": {"type": "array", "items": _ref("ChannelRef")}},
        ["id", "slug", "name", "imageAllowlist", "kotsPublicKey", "channels"],
    ),
    "AppCreate": _obj(
        {"slug": {"type": "string", "description": "Name in pull paths; without it, derived from the name "
                  "(with -2, -3... when taken), as `replicated app create NAME` expects"},
         "name": {"type": "string"},
         "imageAllowlist": {"type": "array", "items": {"type": "string"},
                            "description": "fnmatch patterns on the upstream repository, e.g. vendor/*"},
         "kotsPublicKey": _nullable("string", description="PEM RSA public key that signs KOTS licenses")},
    ),
    "ChannelRef": _obj(
        {"id": {"type": "string"}, "name": {"type": "string"}, "slug": {"type": "string"},
         "description": {"type": "string"}, "releaseSequence": {"type": "integer", "description": "Always 0: "
                         "pullgate ships no releases"}, "releaseLabel": {"type": "string"},
         "isArchived": {"type": "boolean"}, "isDefault": {"type": "boolean", "description": "The app's default "
                        "channel (new customers go on it)"},
         "isDefaultForCustomer": {"type": "boolean", "description": "In a customer: its default channel"}},
        ["id", "name", "slug", "description", "releaseSequence", "releaseLabel", "isArchived", "isDefault"],
    ),
    "Channel": _obj(
        {"id": {"type": "string"}, "appId": {"type": "string"}, "name": {"type": "string"},
         "slug": {"type": "string"}, "channelSlug": {"type": "string"}, "description": {"type": "string"},
         "isDefault": {"type": "boolean"}, "isArchived": {"type": "boolean"},
         "releaseSequence": {"type": "integer"}, "channelSequence": {"type": "integer"},
         "currentVersion": {"type": "string"}, "numReleases": {"type": "integer"},
         "created": _nullable("string", format="date-time"),
         "replicatedRegistryDomain": {"type": "string", "description": "The proxy's public host (proxy.hosts[0])"},
         "customHostNameOverrides": _obj({k: _obj({"hostname": {"type": "string"}}, ["hostname"])
                                          for k in ("registry", "proxy", "downloadPortal", "replicatedApp")}),
         "chartReleases": {"type": "array", "maxItems": 0}},
        ["id", "appId", "name", "slug", "channelSlug", "isDefault", "isArchived", "releaseSequence", "created",
         "replicatedRegistryDomain", "customHostNameOverrides"],
    ),
    "AppUpdate": _obj(
        {"name": {"type": "string"}, "imageAllowlist": {"type": "array", "items": {"type": "string"}},
         "kotsPublicKey": _nullable("string")},
    ),
    "Customer": _obj(
        {"id": {"type": "string"}, "name": {"type": "string"}, "email": _nullable("string"),
         "appSlug": {"type": "string"}, "appId": {"type": "string"},
         "licenseType": {"type": "string", "enum": list(LICENSE_TYPES)},
         "type": {"type": "string", "enum": list(LICENSE_TYPES), "description": "= licenseType (the replicated "
                  "CLI's name)"},
         "expiresAt": _nullable("string", format="date-time"),
         "status": {"type": "string", "enum": ["active", "revoked", "archived"]},
         "createdAt": _nullable("string", format="date-time"),
         "customId": _nullable("string", description="The vendor's own id of the customer"),
         "egressThresholdBytes": _THRESHOLD,
         "channels": {"type": "array", "items": _ref("ChannelRef"), "minItems": 1,
                      "description": "Its release channels, its default first"},
         "licenseId": _nullable("string", description="Only at creation and in GET /customer/{id}"),
         "installationId": _nullable("string", description="= licenseId (the replicated CLI's name); only "
                                     "where licenseId is shown")},
        ["id", "name", "email", "appSlug", "appId", "licenseType", "type", "expiresAt", "status", "createdAt",
         "customId", "channels", "egressThresholdBytes"],
    ),
    "CustomerCreate": {
        "type": "object",
        "description": "pullgate's spelling (appSlug, licenseType, expiresAt, customId, channels as names) or "
        "the replicated CLI's (app_id, type, expires_at, custom_id, channels as objects); one spelling per "
        "field. The CLI's license feature flags (is_airgap_enabled, is_snapshot_supported, ... every is_* "
        "boolean) are accepted and IGNORED: pullgate has nothing they would switch.",
        "properties": {
            "name": {"type": "string"}, "email": {"type": "string"},
            "appSlug": {"type": "string", "description": "The app's slug (or id)"},
            "appId": {"type": "string", "description": "The app's id (or slug)"},
            "app_id": {"type": "string", "description": "The app's id or slug (replicated CLI)"},
            "licenseType": {"type": "string", "enum": list(LICENSE_TYPES)},
            "type": {"type": "string", "enum": list(LICENSE_TYPES)},
            "expiresAt": _nullable("string", description="ISO 8601 time; empty or null: never"),
            "expires_at": _nullable("string", description="ISO 8601 time; empty or null: never"),
            "customId": _nullable("string"), "custom_id": _nullable("string"),
            "egressThresholdBytes": _THRESHOLD,
            "channels": {"type": ["array", "null"], "description": "Channel names, slugs or ids, or the CLI's "
                         "objects; none given: the app's default channel (Stable)",
                         "items": {"oneOf": [{"type": "string"}, _ref("CustomerChannelChoice")]}},
            "channel_id": {"type": "string", "description": "One channel (older replicated CLI releases)"},
            "entitlementValues": {"type": ["array", "null"], "maxItems": 0,
                                  "description": "pullgate has no entitlements: only null or [] (400 otherwise)"},
        },
        "patternProperties": {"^is_[a-z0-9_]+$": {"type": ["boolean", "null"],
                                                 "description": "Accepted and ignored"}},
        "additionalProperties": False,
    },
    "CustomerChannelChoice": _obj(
        {"channel_id": {"type": "string", "description": "Channel id (or name, or slug)"},
         "pinned_channel_sequence": {"type": "null", "description": "pullgate has no releases to pin (400 "
                                     "unless null)"},
         "is_default_for_customer": {"type": "boolean"}},
        ["channel_id"],
    ),
    "CustomerUpdate": _obj(
        {"name": {"type": "string"}, "email": _nullable("string"),
         "licenseType": {"type": "string", "enum": list(LICENSE_TYPES)},
         "expiresAt": _nullable("string", format="date-time"),
         "customId": _nullable("string"), "egressThresholdBytes": _THRESHOLD,
         "channels": {"type": "array", "items": {"type": "string"}, "description": "Channel names, slugs or "
                      "ids, the default first; replaces the customer's channels"}},
    ),
    "CustomerSearch": {
        "type": "object",
        "properties": {
            "app_id": {"type": "string", "description": "App id or slug"},
            "offset": {"type": "integer", "minimum": 0}, "page_size": {"type": "integer", "minimum": 1,
                                                                      "maximum": 100},
            "query": {"type": "string", "description": "name:TEXT, email:TEXT, customId:TEXT or TEXT (any of "
                      "them): a case-insensitive substring match"},
            "instance_preview": {"type": "boolean", "description": "Accepted and ignored"},
            **{f: {"type": "boolean"} for f in ("include_active", "include_inactive", "include_archived",
                                                "include_dev", "include_trial", "include_paid",
                                                "include_community", "include_test")},
        },
        "required": ["app_id"],
        "additionalProperties": False,
    },
    "LicenseImport": _obj({"license": {"type": "string", "description": "KOTS License YAML"}}, ["license"]),
    "PullLog": _obj(
        {"time": _TIME, "createdAt": {**_TIME, "description": "= time (the replicated CLI's name)"},
         "statusCode": {"type": "integer", "description": "= status"},
         "isSuccess": {"type": "boolean", "description": "= success"},
         "customerId": _nullable("string"), "customerName": _nullable("string"),
         "appSlug": _nullable("string"), "registry": _nullable("string"),
         "action": {"type": "string", "enum": ["auth", "manifest", "HEAD", "blob", "tags", "referrers"]},
         "image": _nullable("string"), "reference": _nullable("string"), "status": {"type": "integer"},
         "success": {"type": "boolean"}, "bytes": {"type": "integer"}},
        ["time", "createdAt", "statusCode", "isSuccess", "customerId", "customerName", "appSlug", "registry",
         "action", "image", "reference", "status", "success", "bytes"],
    ),
}

_LOG_FILTERS = [
    _query("customer", "Customer id"),
    _query("registry", "Registry slug or endpoint"),
    _query("since", "From this time (inclusive), ISO 8601", "date-time"),
    _query("until", "Before this time, ISO 8601", "date-time"),
    _query("limit", "At most this many rows (1-1000, default 500), newest first; with CSV, no default bound"),
    _query("format", "json (default) or csv (also chosen by Accept: text/csv): every matching row, oldest "
           "first, streamed; cells starting with = + - @ are prefixed with '"),
]


PATHS: dict[str, Any] = {
    "/openapi.json": {"get": {"summary": "This document", "security": [],
                              "responses": {"200": _json({"type": "object"})}}},
    "/external_registries": {
        "get": _op("List external registries", {"200": _json(_wrap("external_registries",
                   {"type": "array", "items": _ref("ExternalRegistry")}))}, errors=("401",)),
    },
    "/external_registry": {
        "post": _op(
            "Add an external registry (its credentials are tested unless skipValidation)",
            {"201": _json(_wrap("external_registry", _ref("ExternalRegistry")), "Created"), **_CONFLICT},
            body="ExternalRegistryCreate", errors=("400", "401"),
        ),
    },
    "/external_registry/test": {
        "put": _op("Can the stored credentials reach a manifest of this image?",
                   {"200": _json(_ref("ExternalRegistryTestResult"))}, body="ExternalRegistryTest"),
    },
    "/external_registry/logs": {
        "get": _op("Pull log of one registry", {"200": _json(_wrap("logs", {"type": "array",
                   "items": _ref("PullLog")}))}, params=[_query("endpoint", "Registry endpoint or slug")]),
    },
    "/external_registry/{slug}": {
        "parameters": [_path_param("slug", "Registry slug (or endpoint)")],
        "get": _op("Show an external registry", {"200": _json(_wrap("external_registry", _ref("ExternalRegistry")))},
                   errors=("401", "404")),
        "put": _op("Rotate credentials or change apps/url (fields as at creation; provider, endpoint and slug fixed)."
                   " Changing url, insecure, apiUrl, region or roleArn requires the secret again (password,"
                   " secretAccessKey or serviceAccountKey): 400 otherwise, naming the field",
                   {"200": _json(_wrap("external_registry", _ref("ExternalRegistry")))},
                   body="ExternalRegistryCreate"),
        "delete": _op("Remove an external registry", {"204": {"description": "Removed"}}, errors=("401", "404")),
    },
    "/apps": {"get": _op("List apps", {"200": _json(_wrap("apps", {"type": "array", "items": _ref("App")}))},
                         params=[_query("excludeChannels", "Accepted and ignored (the replicated CLI sends it)")],
                         errors=("401",))},
    "/app": {"post": _op("Create an app", {"201": _json(_wrap("app", _ref("App")), "Created"), **_CONFLICT},
                         body="AppCreate", errors=("400", "401"))},
    "/app/{slug}": {
        "parameters": [_path_param("slug", "App slug")],
        "get": _op("Show an app", {"200": _json(_wrap("app", _ref("App")))}, errors=("401", "404")),
        "patch": _op("Change an app's name, image allowlist or KOTS public key",
                     {"200": _json(_wrap("app", _ref("App")))}, body="AppUpdate"),
    },
    "/customers": {
        "get": _op("List customers (never their license IDs)",
                   {"200": _json(_wrap("customers", {"type": "array", "items": _ref("Customer")}))},
                   params=[_query("appSlug", "Only this app's customers")]),
    },
    "/customer": {
        "post": _op("Create a customer; the answer carries its new license ID",
                    {"201": _json(_wrap("customer", _ref("Customer")), "Created")}, body="CustomerCreate",
                    errors=("400", "401")),
    },
    "/customer/{id}": {
        "parameters": [_path_param("id", "Customer id")],
        "get": _op("Show a customer, with its license ID", {"200": _json(_wrap("customer", _ref("Customer")))},
                   errors=("401", "404")),
        "patch": _op("Change name, email, license type or expiry", {"200": _json(_wrap("customer", _ref("Customer")))},
                     body="CustomerUpdate"),
    },
    "/license/import": {
        "post": _op(
            "Import a signed KOTS license (verified under the app's kotsPublicKey) as a customer",
            {"201": _json(_obj({"customer": _ref("Customer"), "created": {"type": "boolean"}},
                               ["customer", "created"]), "Created"),
             "200": _json(_obj({"customer": _ref("Customer"), "created": {"type": "boolean"}},
                               ["customer", "created"]), "Updated (already imported)"),
             "429": _json(_ref("Error"), "Too many imports by this team lately; Retry-After says when to retry")},
            body="LicenseImport", errors=("400", "401"),
        ),
    },
    "/pull_logs": {
        "get": _op("Pull log, newest first (CSV: oldest first)", {"200": _with_csv(_json(_wrap("logs", {"type": "array",
                   "items": _ref("PullLog")})))}, params=_LOG_FILTERS),
    },
}

SCHEMAS["CustomHostname"] = _obj(
    {"hostname": {"type": "string"}, "status": {"enum": ["pending", "verified", "failed"]},
     "reason": _nullable("string", description="Why the last ownership check failed"),
     "isDefault": {"type": "boolean", "description": "Used in the portal's pull references"},
     "verification": _obj({"dnsRecord": {"type": "string"}, "dnsType": {"const": "TXT"},
                           "dnsValue": {"type": "string"},
                           "httpUrl": _nullable("string", description="null unless the operator turned the"
                                                " HTTP challenge on (domains.http_challenge)")},
                          ["dnsRecord", "dnsType", "dnsValue", "httpUrl"]),
     "certificate": {"oneOf": [{"type": "null"}, _obj({"notAfter": {"type": "string"},
                     "expiresInDays": {"type": "integer"}, "expiringSoon": {"type": "boolean"}},
                     ["notAfter", "expiresInDays", "expiringSoon"])]},
     "createdAt": _nullable("string")},
    ["hostname", "status", "reason", "isDefault", "verification", "certificate", "createdAt"],
)
SCHEMAS["CustomHostnameCreate"] = _obj({"hostname": {"type": "string", "example": "images.vendor.example"}},
                                       ["hostname"])
SCHEMAS["CustomHostnameCertificate"] = _obj(
    {"certificate": {"type": "string", "description": "PEM chain, leaf first"},
     "key": {"type": "string", "description": "PEM private key (stored encrypted; never returned)"}},
    ["certificate", "key"],
)
_HOSTNAME = {"200": _json(_wrap("custom_hostname", _ref("CustomHostname")))}
PATHS["/custom_hostnames"] = {
    "get": _op("List custom hostnames", {"200": _json(_wrap("custom_hostnames", {"type": "array",
               "items": _ref("CustomHostname")}))}, errors=("401",)),
    "post": _op("Add a custom hostname (pending until verified); 409 for a name the operator reserved",
                {"201": _json(_wrap("custom_hostname", _ref("CustomHostname")), "Created"), **_CONFLICT},
                body="CustomHostnameCreate", errors=("400", "401")),
}
_HOST_PARAM = [_path_param("hostname", "The custom hostname")]
PATHS["/custom_hostname/{hostname}"] = {
    "parameters": _HOST_PARAM,
    "delete": _op("Remove a custom hostname", {"204": {"description": "Removed"}}, errors=("401", "404")),
}
PATHS["/custom_hostname/{hostname}/verify"] = {
    "parameters": _HOST_PARAM,
    "post": _op("Check ownership: the DNS TXT record (the HTTP challenge through the hostname only when the"
                " operator turned it on; never for a reserved name)", _HOSTNAME,
                errors=("401", "404")),
}
PATHS["/custom_hostname/{hostname}/default"] = {
    "parameters": _HOST_PARAM,
    "post": _op("Make this verified hostname the team's default", _HOSTNAME),
}
PATHS["/custom_hostname/{hostname}/certificate"] = {
    "parameters": _HOST_PARAM,
    "put": _op("Upload the TLS certificate and key served for this hostname (by SNI)", _HOSTNAME,
               body="CustomHostnameCertificate"),
}

# Shaped as the `replicated` CLI asks (app ids or slugs in the path).
_CLI = ["replicated CLI"]
_APP_ID = _path_param("appId", "App id or slug")
_HOSTS = {"type": "array", "items": _obj({"app_id": {"type": "string"}, "is_default": {"type": "boolean"},
                                          "hostname": {"type": "string"}, "created_at": _nullable("string"),
                                          "domain_verification_type": {"type": "string"},
                                          "domain_verification_status": {"type": "string"}},
                                         ["app_id", "is_default", "hostname"])}
PATHS["/app/{appId}/channels"] = {
    "parameters": [_APP_ID],
    "get": {**_op("An app's release channels", {"200": _json(_wrap("channels", {"type": "array",
                  "items": _ref("Channel")}))},
                  params=[_query("channelName", "Only the channel of this name, slug or id (any case)"),
                          _query("excludeDetail", "Accepted and ignored (there is no detail to exclude)")]),
            "tags": _CLI},
}
PATHS["/app/{appId}/channel/{channelId}"] = {
    "parameters": [_APP_ID, _path_param("channelId", "Channel id (not its name: 404, as the CLI expects)")],
    "get": {**_op("A release channel", {"200": _json(_wrap("channel", _ref("Channel")))}, errors=("401", "404")),
            "tags": _CLI},
}
PATHS["/app/{appId}/customers"] = {
    "parameters": [_APP_ID],
    "get": {**_op("One page of an app's customers (never their license IDs), and how many there are",
                  {"200": _json(_obj({"customers": {"type": "array", "items": _ref("Customer")},
                                      "totalCustomers": {"type": "integer"}}, ["customers", "totalCustomers"]))},
                  params=[_query("currentPage", "Page number from 0"),
                          _query("pageSize", "1-100, default 100"),
                          _query("includeTest", "true: test licenses too (left out otherwise)")]),
            "tags": _CLI},
}
PATHS["/app/{appId}/custom-hostnames"] = {
    "parameters": [_APP_ID],
    "get": {**_op("The team's verified custom hostnames, under Body (the CLI's struct field)",
                  {"200": _json(_wrap("Body", _obj({"registry": _HOSTS, "proxy": _HOSTS, "downloadPortal": _HOSTS,
                                                    "replicatedApp": _HOSTS},
                                                   ["registry", "proxy", "downloadPortal", "replicatedApp"])))},
                  errors=("401", "404")),
            "tags": _CLI},
}
PATHS["/customers/search"] = {
    "post": {**_op("Find an app's customers (never their license IDs)",
                   {"200": _json(_obj({"customers": {"type": "array", "items": _ref("Customer")},
                                       "total_hits": {"type": "integer"}}, ["customers", "total_hits"]))},
                   body="CustomerSearch"),
             "tags": _CLI},
}

# Egress per customer (from the daily rollup), thresholds and the team webhook.
_SUMS = {"bytes": {"type": "integer", "description": "Bytes served"},
         "pulls": {"type": "integer", "description": "Successful manifest GETs"},
         "requests": {"type": "integer", "description": "Requests of every kind"}}
SCHEMAS["EgressRow"] = _obj(
    {"day": {"type": "string", "format": "date"}, "month": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
     "customerId": {"type": "string"}, "customerName": _nullable("string"), "appSlug": {"type": "string"},
     "registry": _nullable("string"), "image": _nullable("string"), **_SUMS},
    ["bytes", "pulls", "requests"],
)
SCHEMAS["Egress"] = _obj(
    {"since": {"type": "string", "format": "date"}, "until": {"type": "string", "format": "date"},
     "groupBy": {"enum": ["day", "month", "customer", "app", "image"]},
     "customer": _nullable("string"), "app": _nullable("string"),
     "totals": _obj(_SUMS, ["bytes", "pulls", "requests"]),
     "rows": {"type": "array", "items": _ref("EgressRow")}},
    ["since", "until", "groupBy", "customer", "app", "totals", "rows"],
)
SCHEMAS["CustomerEgress"] = _obj(
    {"month": {"type": "string"}, "bytes": {"type": "integer"}, "thresholdBytes": _nullable("integer"),
     "reached": {"type": "boolean"}, "percent": _nullable("number"),
     "notification": {"oneOf": [{"type": "null"}, _obj({"state": {"enum": ["pending", "delivered", "failed",
                      "no_webhook"]}, "attempts": {"type": "integer"}, "at": {"type": "string"}},
                      ["state", "attempts", "at"])]}},
    ["month", "bytes", "thresholdBytes", "reached", "percent", "notification"],
)
SCHEMAS["Webhook"] = _obj(
    {"url": {"type": "string"}, "secretSet": {"type": "boolean", "description": "The secret itself is never shown"},
     "updatedAt": {"type": "string"}},
    ["url", "secretSet", "updatedAt"],
)
SCHEMAS["WebhookUpdate"] = _obj(
    {"url": {"type": "string", "description": "http(s) URL; must pass the egress policy (400 names the rule)"},
     "secret": {"type": ["string", "null"], "writeOnly": True, "description": "HMAC-SHA256 key of "
                "X-Pullgate-Signature (stored encrypted); null: none; left out: kept (the url unchanged)"}},
    ["url"],
)
SCHEMAS["WebhookDelivery"] = _obj(
    {"id": {"type": "string"}, "event": {"type": "string"}, "customerId": _nullable("string"),
     "month": _nullable("string"), "attempt": {"type": "integer"}, "time": _TIME, "url": {"type": "string"},
     "status": _nullable("integer", description="The receiver's HTTP status; null when none came"),
     "error": _nullable("string"), "ok": {"type": "boolean"}},
    ["id", "event", "customerId", "month", "attempt", "time", "url", "status", "error", "ok"],
)
PATHS["/egress"] = {
    "get": _op("Egress (bytes served) per day, month, customer, app or image, from the daily rollup",
               {"200": _with_csv(_json(_ref("Egress")))},
               params=[_query("customer", "Customer id"), _query("app", "App slug"),
                       _query("since", "First day (UTC, inclusive), YYYY-MM-DD or an ISO time; default: the "
                              "first of this month", "date"),
                       _query("until", "Day after the last (exclusive); default: tomorrow", "date"),
                       _query("groupBy", "day (default), month, customer, app or image"),
                       _query("format", "json (default) or csv (also chosen by Accept: text/csv)")]),
}
PATHS["/customer/{id}/egress"] = {
    "parameters": [_path_param("id", "Customer id")],
    "get": _op("This month's egress against the customer's threshold, and its notification",
               {"200": _json(_wrap("egress", _ref("CustomerEgress")))}, errors=("401", "404")),
}
PATHS["/team/webhook"] = {
    "get": _op("The team's webhook (url, and whether a secret is set); null when none",
               {"200": _json(_wrap("webhook", {"oneOf": [{"type": "null"}, _ref("Webhook")]}))}, errors=("401",)),
    "put": _op("Set the team's webhook (egress.threshold_reached events, signed with the secret)",
               {"200": _json(_wrap("webhook", _ref("Webhook")))}, body="WebhookUpdate", errors=("400", "401")),
    "delete": _op("Remove the team's webhook", {"204": {"description": "Removed"}}, errors=("401", "404")),
}
PATHS["/team/webhook/deliveries"] = {
    "get": _op("Every delivery attempt, newest first",
               {"200": _json(_wrap("deliveries", {"type": "array", "items": _ref("WebhookDelivery")}))},
               params=[_query("customer", "Customer id"), _query("limit", "At most this many (1-500, default 100)")]),
}

for _action, _what in (("revoke", "Revoke"), ("archive", "Archive"), ("restore", "Restore (make active again)")):
    PATHS[f"/customer/{{id}}/{_action}"] = {
        "parameters": [_path_param("id", "Customer id")],
        "post": _op(f"{_what} a customer's license", {"200": _json(_wrap("customer", _ref("Customer")))},
                    errors=("401", "404")),
    }

# fmt: on


def provider_properties() -> dict[str, Any]:
    """The request fields the providers declare, each described by the providers that take it."""
    props: dict[str, Any] = {}
    for name in {f.api: None for p in PROVIDERS.values() for f in p.fields if f.in_api}:
        helps: dict[str, list[str]] = {}
        secret = False
        for p in PROVIDERS.values():
            for f in p.fields:
                if f.api == name and f.in_api:
                    helps.setdefault(f.help, []).append(p.name)
                    secret = secret or f.secret
        description = "; ".join(f"{'/'.join(kinds)}: {text}" for text, kinds in helps.items())
        prop: dict[str, Any] = {"type": "string", "description": description}
        if secret:
            prop["writeOnly"] = True
        props[name] = prop
    return props


def _registry_request() -> dict[str, Any]:
    schema = copy.deepcopy(SCHEMAS["ExternalRegistryCreate"])
    schema["properties"] = {**schema["properties"], **provider_properties()}
    schema["properties"]["provider"] = {"type": "string", "enum": list(PROVIDERS)}
    defaults = ", ".join(f"{p.name} {p.default_endpoint}" for p in PROVIDERS.values() if p.default_endpoint)
    schema["properties"]["endpoint"]["description"] = f"Host as written in image references; defaults: {defaults}"
    return schema


@cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pullgate vendor API",
            "version": __version__,
            "description": "External registries, apps, customers (licenses) and pull logs of one team. "
            "Shapes follow Replicated's vendor API v3 where it has them. No answer ever carries a registry "
            "password, secret key or service-account key.",
        },
        "servers": [{"url": "/vendor/v3"}],
        "security": [{"apiToken": []}],
        "components": {
            "securitySchemes": {
                "apiToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "A team API token, bare or as `Bearer <token>`",
                },
            },
            "schemas": SCHEMAS,
        },
        "paths": PATHS,
    }


def document() -> dict[str, Any]:
    """The document; its provider parts read the registered providers now (a provider
    registered after start shows up)."""
    doc = copy.deepcopy(_document())
    schemas = doc["components"]["schemas"]
    schemas["ExternalRegistryCreate"] = _registry_request()
    shown = schemas["ExternalRegistry"]["properties"]
    shown["provider"] = {"type": "string", "enum": list(PROVIDERS)}
    for p in PROVIDERS.values():
        for f in shown_destinations(p.name):
            shown.setdefault(f.api, {"type": "string", "description": f"{p.name}: {f.help}"})
    return doc
