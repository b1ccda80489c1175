"""The requests the `replicated` vendor CLI (v0.129) sends, and what it reads back.

Declared once, from the CLI's Go source (github.com/replicatedhq/replicated; each
entry names the file). The CLI itself cannot be built here (its module is not on
the Go proxy this machine may use), so tests send these exact requests to a real
pullgate and decode the answers with Go's rules (`decode`).

How the CLI talks (pkg/platformclient/client.go, HTTPClient.DoJSON): the origin is
REPLICATED_API_ORIGIN (pullgate: `<admin origin>/vendor`), then `/v3/...`; headers
`Authorization: <raw API token>` (no scheme), `Content-Type: application/json`,
`Accept: application/json`, `User-Agent: Replicated/<version>`; the body is Go's
json.Encoder output of the request struct (every field, zero values included,
`omitempty` fields left out when zero; a nil slice is `null`). Any status but the
one the call wants is an error: 404 is always `ErrNotFound` ("Not found"), whatever
the body; for other statuses the CLI prints the body's `message` (or the raw body).
Answers are decoded with encoding/json: unknown keys are ignored, keys match
case-insensitively, a JSON null leaves a field at its zero value, and a value of the
wrong JSON type fails the whole command.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CLI_VERSION = "0.129.0"


def headers(token: str) -> dict[str, str]:
    """Every request's headers (pkg/platformclient/client.go, DoJSON)."""
    return {
        "Authorization": token,
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": f"Replicated/{CLI_VERSION}",
    }


# --- Go's decoding of an answer ----------------------------------------------------------


class GoType:
    def problems(self, value: Any, where: str) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Str(GoType):
    def problems(self, value: Any, where: str) -> list[str]:
        return [] if value is None or isinstance(value, str) else [f"{where}: string expected, got {value!r}"]


@dataclass(frozen=True)
class Int(GoType):
    def problems(self, value: Any, where: str) -> list[str]:
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
        return [] if ok else [f"{where}: integer expected, got {value!r}"]


@dataclass(frozen=True)
class Bool(GoType):
    def problems(self, value: Any, where: str) -> list[str]:
        return [] if value is None or isinstance(value, bool) else [f"{where}: boolean expected, got {value!r}"]


@dataclass(frozen=True)
class Time(GoType):
    """time.Time (and *time.Time): JSON null, or an RFC 3339 string."""

    def problems(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, str) or not re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value
        ):
            return [f"{where}: RFC 3339 time expected, got {value!r}"]
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return []


@dataclass(frozen=True)
class Slice(GoType):
    item: GoType

    def problems(self, value: Any, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            return [f"{where}: array expected, got {type(value).__name__}"]
        return [p for i, v in enumerate(value) for p in self.item.problems(v, f"{where}[{i}]")]


@dataclass(frozen=True)
class Struct(GoType):
    """A Go struct: `fields` by JSON key; `needs` the keys the command uses, which must be
    there and not empty for it to do its work."""

    fields: Mapping[str, GoType]
    needs: frozenset[str] = frozenset()

    def problems(self, value: Any, where: str) -> list[str]:
        if value is None:
            return [f"{where}: missing"] if self.needs else []
        if not isinstance(value, dict):
            return [f"{where}: object expected, got {type(value).__name__}"]
        out = []
        for key, tp in self.fields.items():
            got = lookup(value, key)
            if got is not _ABSENT:
                out += tp.problems(got, f"{where}.{key}")
            if key in self.needs and got in (_ABSENT, None, ""):
                out.append(f"{where}.{key}: the CLI needs it")
        return out


_ABSENT = object()


def lookup(obj: Mapping[str, Any], key: str) -> Any:
    """encoding/json's key match: exact first, else case-insensitive."""
    if key in obj:
        return obj[key]
    return next((v for k, v in obj.items() if k.lower() == key.lower()), _ABSENT)


def decode(tp: GoType, value: Any) -> list[str]:
    return tp.problems(value, "answer")


def struct(needs: tuple[str, ...] = (), **fields: GoType) -> Struct:
    return Struct(fields, frozenset(needs))


# --- the CLI's structs (pkg/types/*.go, pkg/kotsclient/*.go) -------------------------------

STR, INT, BOOL, TIME = Str(), Int(), Bool(), Time()
# pkg/types/channel.go Channel
CHANNEL = struct(
    ("id", "name"), id=STR, name=STR, description=STR, slug=STR, releaseSequence=INT, releaseLabel=STR, isArchived=BOOL
)
_HOSTNAME = struct(hostname=STR)
# pkg/types/channel.go KotsChannel (adoptionRate, customers and releases: pullgate sends none)
KOTS_CHANNEL = struct(
    ("id", "name"),
    appId=STR,
    buildAirgapAutomatically=BOOL,
    channelIcon=STR,
    channelSequence=INT,
    channelSlug=STR,
    created=TIME,
    currentVersion=STR,
    description=STR,
    enterprisePartnerChannelID=STR,
    id=STR,
    isArchived=BOOL,
    isDefault=BOOL,
    name=STR,
    numReleases=INT,
    releaseNotes=STR,
    releaseSequence=INT,
    updated=TIME,
    replicatedRegistryDomain=STR,
    customHostNameOverrides=struct(
        registry=_HOSTNAME, proxy=_HOSTNAME, downloadPortal=_HOSTNAME, replicatedApp=_HOSTNAME
    ),
    chartReleases=Slice(struct(name=STR, version=STR, weight=INT, error=STR, hasPreflightSpec=BOOL)),
)
# pkg/types/app.go KotsAppWithChannels
KOTS_APP = struct(
    ("id", "name", "slug"),
    channels=Slice(CHANNEL),
    created=TIME,
    description=STR,
    id=STR,
    isArchived=BOOL,
    isKotsApp=BOOL,
    name=STR,
    renamedAt=TIME,
    slug=STR,
    teamId=STR,
)
# pkg/types/registry.go Registry and RegistryLog
REGISTRY = struct(
    ("provider", "endpoint", "slug"),
    provider=STR,
    endpoint=STR,
    slug=STR,
    authType=STR,
    username=STR,
    appIds=Slice(STR),
    lastUsedAt=TIME,
)
REGISTRY_LOG = struct(("createdAt", "action"), createdAt=STR, action=STR, statusCode=INT, isSuccess=BOOL, image=STR)
# pkg/types/customer.go Customer (instances and entitlements: pullgate sends none)
_CUSTOMER_FIELDS: dict[str, GoType] = {
    "id": STR,
    "customId": STR,
    "name": STR,
    "email": STR,
    "channels": Slice(CHANNEL),
    "type": STR,
    "expiresAt": TIME,
    "installationId": STR,
    "airgap": BOOL,
    **{
        flag: BOOL
        for flag in (
            "isEmbeddedClusterDownloadEnabled",
            "isEmbeddedClusterMultinodeDisabled",
            "isGeoaxisSupported",
            "isHelmVmDownloadEnabled",
            "isIdentityServiceSupported",
            "isInstallerSupportEnabled",
            "isKotsInstallEnabled",
            "isSnapshotSupported",
            "isSupportBundleUploadEnabled",
            "isGitopsSupported",
        )
    },
}
CUSTOMER = Struct(_CUSTOMER_FIELDS, frozenset({"id", "name", "type", "channels"}))
# Where the license is shown (created, GET /customer/{id}): its license ID as installationId.
CUSTOMER_WITH_LICENSE = Struct(_CUSTOMER_FIELDS, frozenset({"id", "name", "type", "channels", "installationId"}))
# pkg/types/custom_hostname.go KotsAppCustomHostname
_CUSTOM_HOSTNAME = struct(
    ("hostname",),
    app_id=STR,
    is_default=BOOL,
    team_id=STR,
    origin_server=STR,
    hostname=STR,
    created_at=TIME,
    updated_at=TIME,
    domain_verification_type=STR,
    domain_verification_status=STR,
    verification_errors=Slice(STR),
    failure_count=INT,
    failure_reason=STR,
)


# --- the catalogue -------------------------------------------------------------------------


@dataclass(frozen=True)
class CliRequest:
    command: str  # the `replicated` command that sends it
    source: str  # the Go file (and function) it is written in
    method: str
    path: str  # under REPLICATED_API_ORIGIN, with {placeholders}
    status: int  # the one status DoJSON accepts
    body: Any = None  # as Go encodes the request struct, with {placeholders} in strings
    reads: GoType | None = None  # the response struct
    notes: str = ""

    def fill(self, **values: Any) -> tuple[str, Any]:
        """The concrete path and body for these placeholder values."""
        return _fill(self.path, values), _fill(self.body, values)


def _fill(obj: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(obj, str):
        whole = re.fullmatch(r"\{(\w+)\}", obj)
        if whole and whole.group(1) in values and not isinstance(values[whole.group(1)], str):
            return values[whole.group(1)]  # a non-string value (a number, a list) in place of the whole string
        return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), obj)
    if isinstance(obj, dict):
        return {k: _fill(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, values) for v in obj]
    return obj


# The CLI's license feature flags (pkg/kotsclient/customer_create.go CreateCustomerRequest):
# pullgate accepts and ignores them.
CUSTOMER_FLAGS = {
    "is_airgap_enabled": False,
    "is_gitops_supported": False,
    "is_snapshot_supported": False,
    "is_kots_install_enabled": True,
    "is_embedded_cluster_download_enabled": False,
    "is_geoaxis_supported": False,
    "is_helm_vm_download_enabled": False,
    "is_identity_service_supported": False,
    "is_installer_support_enabled": False,
    "is_support_bundle_upload_enabled": False,
    "is_dev_mode_enabled": False,
}

APP_LS = CliRequest(
    "app ls",
    "pkg/kotsclient/app.go (ListApps); pkg/kotsclient/types/types.go KotsAppResponse",
    "GET",
    "/v3/apps?excludeChannels=false",
    200,
    reads=struct(("apps",), apps=Slice(KOTS_APP)),
    notes="also how every command resolves --app (slug or id) to the app id it puts in paths (GetApp)",
)
APP_CREATE = CliRequest(
    "app create NAME",
    "pkg/kotsclient/app_create.go (CreateKOTSApp); pkg/kotsclient/types/types.go CreateKOTSAppResponse",
    "POST",
    "/v3/app",
    201,
    body={"name": "{name}"},
    reads=struct(("app",), app=KOTS_APP),
)
REGISTRY_LS = CliRequest(
    "registry ls",
    "pkg/kotsclient/registry_list.go (ListRegistries)",
    "GET",
    "/v3/external_registries",
    200,
    reads=struct(external_registries=Slice(REGISTRY)),
)
REGISTRY_ADD = CliRequest(
    "registry add other --endpoint HOST --username U --password P [--skip-validation]",
    "pkg/kotsclient/registry_add.go (AddKOTSRegistry); cli/cmd/registry_add_*.go: slug = --name, else the endpoint",
    "POST",
    "/v3/external_registry",
    201,
    body={
        "provider": "other",
        "endpoint": "{endpoint}",
        "slug": "{endpoint}",
        "authType": "password",
        "username": "{username}",
        "password": "{password}",
        "skipValidation": "{skip}",
    },
    reads=struct(("external_registry",), external_registry=REGISTRY),
)
REGISTRY_TEST = CliRequest(
    "registry test HOSTNAME --image IMAGE",
    "pkg/kotsclient/registry_validate.go (TestKOTSRegistry)",
    "PUT",
    "/v3/external_registry/test",
    200,
    body={"endpoint": "{endpoint}", "image": "{image}"},
    reads=struct(("status",), status=INT),
)
REGISTRY_LOGS = CliRequest(
    "registry logs HOSTNAME",
    "pkg/kotsclient/registry_logs.go (LogsRegistry); pkg/types/registry.go RegistryLog",
    "GET",
    "/v3/external_registry/logs?endpoint={endpoint_q}",
    200,
    reads=struct(logs=Slice(REGISTRY_LOG)),
)
REGISTRY_RM = CliRequest(
    "registry rm SLUG",
    "pkg/kotsclient/registry_rm.go (RemoveKOTSRegistry): url.QueryEscape of the argument",
    "DELETE",
    "/v3/external_registry/{slug_q}",
    204,
)
CUSTOMER_LS = CliRequest(
    "customer ls --app APP",
    "pkg/kotsclient/customer_list.go (ListCustomers): pages from 0 until totalCustomers or an empty page",
    "GET",
    "/v3/app/{appId}/customers?currentPage={page}",
    200,
    reads=struct(("customers",), customers=Slice(CUSTOMER), totalCustomers=INT),
)
CUSTOMER_LS_TEST = CliRequest(
    "customer ls --app APP --include-test",
    "pkg/kotsclient/customer_list.go (ListCustomers, includeTest)",
    "GET",
    "/v3/app/{appId}/customers?currentPage={page}&includeTest=true",
    200,
    reads=CUSTOMER_LS.reads,
)
CUSTOMER_SEARCH = CliRequest(
    "customer ls/inspect --customer NAME",
    "pkg/kotsclient/customer_list.go (listCustomersByName): offset += 100 until offset > total_hits",
    "POST",
    "/v3/customers/search",
    200,
    body={
        "app_id": "{appId}",
        "offset": "{offset}",
        "page_size": 100,
        "query": "name:{name}",
        "include_active": True,
        "include_archived": False,
        "include_community": True,
        "include_dev": True,
        "include_inactive": True,
        "include_paid": True,
        "include_trial": True,
        "instance_preview": False,
    },
    reads=struct(("customers",), customers=Slice(CUSTOMER), total_hits=INT),
)
CUSTOMER_GET = CliRequest(
    "customer inspect --customer ID (and after a search by name)",
    "pkg/kotsclient/customer_list.go (GetCustomerByID): url.PathEscape of the id",
    "GET",
    "/v3/customer/{customerId}",
    200,
    reads=struct(("customer",), customer=CUSTOMER_WITH_LICENSE),
)
CHANNEL_GET = CliRequest(
    "customer create --channel NAME_OR_ID (first try); customer inspect (the customer's channel)",
    "client/channel.go (GetOrCreateChannelByName: a 404 falls through to the list);"
    " pkg/kotsclient/channel.go (GetKotsChannel): url.QueryEscape of the id",
    "GET",
    "/v3/app/{appId}/channel/{channel_q}",
    200,
    reads=struct(("channel",), channel=KOTS_CHANNEL),
)
CHANNEL_LIST = CliRequest(
    "customer create --channel NAME (after the 404)",
    "pkg/kotsclient/channel.go (ListKotsChannels with excludeDetails); client/channel.go (findChannel: by id or"
    " exact name)",
    "GET",
    "/v3/app/{appId}/channels?channelName={channel_q}&excludeDetail=true",
    200,
    reads=struct(("channels",), channels=Slice(KOTS_CHANNEL)),
)
CUSTOMER_CREATE = CliRequest(
    "customer create --app APP --name N --channel C --type trial --email E --custom-id X --expires-in 720h",
    "pkg/kotsclient/customer_create.go (CreateCustomerRequest); cli/cmd/customer_create.go (paid -> prod)",
    "POST",
    "/v3/customer",
    201,
    body={
        "name": "{name}",
        "channels": [{"channel_id": "{channelId}", "pinned_channel_sequence": None, "is_default_for_customer": True}],
        "custom_id": "{customId}",
        "app_id": "{appId}",
        "type": "{type}",
        "expires_at": "{expiresAt}",
        **CUSTOMER_FLAGS,
        "email": "{email}",
        "entitlementValues": None,
    },
    reads=struct(("customer",), customer=CUSTOMER_WITH_LICENSE),
)
CUSTOM_HOSTNAMES = CliRequest(
    "customer inspect (the registry host to show)",
    "pkg/kotsclient/custom_hostname.go (ListCustomHostnames: a struct field `Body`, no JSON tag);"
    " pkg/types/custom_hostname.go; cli/cmd/customer_inspect.go (registryHostname)",
    "GET",
    "/v3/app/{appId}/custom-hostnames",
    200,
    reads=struct(
        Body=struct(
            registry=Slice(_CUSTOM_HOSTNAME),
            proxy=Slice(_CUSTOM_HOSTNAME),
            downloadPortal=Slice(_CUSTOM_HOSTNAME),
            replicatedApp=Slice(_CUSTOM_HOSTNAME),
        )
    ),
)

CATALOGUE: tuple[CliRequest, ...] = (
    APP_LS,
    APP_CREATE,
    REGISTRY_LS,
    REGISTRY_ADD,
    REGISTRY_TEST,
    REGISTRY_LOGS,
    REGISTRY_RM,
    CUSTOMER_LS,
    CUSTOMER_LS_TEST,
    CUSTOMER_SEARCH,
    CUSTOMER_GET,
    CHANNEL_GET,
    CHANNEL_LIST,
    CUSTOMER_CREATE,
    CUSTOM_HOSTNAMES,
)
