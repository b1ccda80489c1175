"""The `pullgate` vendor CLI, run as a user runs it, against a running `pullgate serve`."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.capture import CaptureServer
from tests.support.pullgate import REPO_ROOT
from tests.support.vendor import VendorEnv, kots_license, public_pem, rsa_key


def run(
    env: VendorEnv,
    *args: str,
    stdin: str | None = None,
    token: str | None = "alpha",  # noqa: S107 - a team name
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PULLGATE_")}
    environ["PULLGATE_API_ORIGIN"] = env.admin
    if token:
        environ["PULLGATE_API_TOKEN"] = env.tokens.get(token, token)
    proc = subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )
    for text in (proc.stdout, proc.stderr):
        env.assert_clean(text, f"the output of pullgate {' '.join(args)}")
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def pull_status(env: VendorEnv, path: str, license_id: str) -> int:
    auth = "Basic " + base64.b64encode(f"LICENSE_ID:{license_id}".encode()).decode()
    headers = {"Authorization": auth, "Accept": "application/vnd.oci.image.manifest.v1+json"}
    req = urllib.request.Request(env.server.url + path, headers=headers)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(req, timeout=20) as r:  # noqa: S310 - loopback
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_registry_add_test_rotate_remove(vendor_env: VendorEnv):
    up = vendor_env.basic
    assert up.password
    add = run(
        vendor_env,
        "registry",
        "add",
        "other",
        "--endpoint",
        "cli.example.test",
        "--name",
        "cli-basic",
        "--url",
        up.url,
        "--insecure",
        "--username",
        "vendor",
        "--password-stdin",
        "--image",
        "vendor/oci:v1",
        stdin=up.password + "\n",
    )
    header, row = add.stdout.splitlines()[:2]
    assert header.split() == ["NAME", "PROVIDER", "ENDPOINT", "APP_IDS", "AUTHTYPE"]
    assert row.split() == ["cli-basic", "other", "cli.example.test", "password"]
    listed = json.loads(run(vendor_env, "registry", "ls", "-o", "json").stdout)
    reg = next(r for r in listed if r["slug"] == "cli-basic")
    assert reg["url"] == up.url and reg["username"] == "vendor"
    one = run(vendor_env, "registry", "ls", "cli-basic").stdout.splitlines()
    assert len(one) == 2 and one[1].startswith("cli-basic")

    ok = run(vendor_env, "registry", "test", "cli.example.test", "--image", "vendor/oci:v1")
    assert ok.stdout.startswith("ok:")
    missing = run(vendor_env, "registry", "test", "cli.example.test", "--image", "vendor/oci:nope", check=False)
    assert missing.returncode == 1
    assert "MANIFEST_UNKNOWN" in missing.stderr and "hint:" in missing.stderr

    # Rotation: a wrong password is refused by the registry test, and the failure is reported as
    # <METHOD> <URL> <status>: <message>.
    wrong = run(
        vendor_env,
        "registry",
        "update",
        "cli-basic",
        "--password-stdin",
        "--image",
        "vendor/oci:v1",
        stdin="wrong-password\n",
        check=False,
    )
    assert wrong.returncode == 1
    assert f"PUT {vendor_env.admin}/vendor/v3/external_registry/cli-basic 400: " in wrong.stderr
    assert "wrong-password" not in wrong.stderr
    run(
        vendor_env, "registry", "update", "cli-basic", "--password-stdin", "--image", "vendor/oci:v1", stdin=up.password
    )
    assert run(vendor_env, "registry", "test", "cli-basic", "--image", "vendor/oci:v1").returncode == 0

    assert "removed" in run(vendor_env, "registry", "rm", "cli-basic").stdout
    again = run(vendor_env, "registry", "rm", "cli-basic", check=False)
    assert again.returncode == 1
    assert again.stderr.strip().endswith(
        f"DELETE {vendor_env.admin}/vendor/v3/external_registry/cli-basic 404: no external registry 'cli-basic'"
    )


def test_registry_update_to_a_new_url_needs_the_password_again(vendor_env: VendorEnv):
    """Hole 3 through the CLI: `registry update --url` alone must not send the stored password there."""
    up = vendor_env.basic
    add = ["registry", "add", "other", "--endpoint", "cli-replay.example.test", "--name", "cli-replay"]
    run(vendor_env, *add, "--url", up.url, "--insecure", "--username", "vendor", "--password-stdin", stdin=up.password)
    refused = (
        "400: invalid request: url: changing where the registry is reached requires giving the secret again (password)"
    )
    with CaptureServer() as trap:
        for extra in ([], ["--skip-validation"]):
            move = ["registry", "update", "cli-replay", "--url", trap.url, "--insecure", *extra]
            moved = run(vendor_env, *move, check=False)
            assert trap.credentials == [], "the stored password was sent to the new url"
            assert moved.returncode == 1
            assert refused in moved.stderr
            assert "hint: give the password again with --password-stdin" in moved.stderr
        assert trap.seen == []
        listed = json.loads(run(vendor_env, "registry", "ls", "cli-replay", "-o", "json").stdout)
        assert listed[0]["url"] == up.url
        move = ["registry", "update", "cli-replay", "--url", trap.url, "--insecure", "--skip-validation"]
        assert run(vendor_env, *move, "--password-stdin", stdin="typed-for-the-trap\n").returncode == 0
    run(vendor_env, "registry", "rm", "cli-replay")


def test_customers_pull_and_logs(vendor_env: VendorEnv):
    up = vendor_env.basic
    run(vendor_env, "app", "create", "cli-app", "--name", "CLI App", "--allow", "vendor/*")
    apps = json.loads(run(vendor_env, "app", "ls", "-o", "json").stdout)
    assert next(a for a in apps if a["slug"] == "cli-app")["imageAllowlist"] == ["vendor/*"]
    run(
        vendor_env,
        "registry",
        "add",
        "other",
        "--endpoint",
        "cli2.example.test",
        "--name",
        "cli-reg",
        "--url",
        up.url,
        "--insecure",
        "--username",
        "vendor",
        "--password-stdin",
        "--app-ids",
        "cli-app",
        stdin=up.password,
    )
    created = run(
        vendor_env,
        "customer",
        "create",
        "--name",
        "CLI Customer",
        "--email",
        "cli@c.test",
        "--app",
        "cli-app",
        "--type",
        "trial",
        "--expires-at",
        "2031-01-01T00:00:00Z",
        "--channel",
        "Beta",
        "--channel",
        "stable",
        "--custom-id",
        "crm-7",
    )
    line = next(x for x in created.stdout.splitlines() if x.startswith("License ID"))
    license_id = line.rsplit(" ", 1)[1]
    customer_id = created.stdout.splitlines()[1].split()[0]
    assert created.stdout.count(license_id) == 1
    vendor_env.canaries.append(license_id)  # printed once, at creation; never again

    listed = run(vendor_env, "customer", "ls", "--app", "cli-app")
    assert customer_id in listed.stdout and "trial" in listed.stdout and "2031-01-01" in listed.stdout
    assert " Beta,Stable " in listed.stdout  # its channels, its default first
    apps = run(vendor_env, "app", "ls").stdout.splitlines()
    assert "CHANNELS" in apps[0].split() and all("Stable,Beta,Unstable" in row for row in apps[1:])
    path = "/v2/proxy/cli-app/cli-reg/vendor/oci/manifests/v1"
    assert pull_status(vendor_env, path, license_id) == 200
    logs = run(vendor_env, "registry", "logs", "cli-reg")
    rows = logs.stdout.splitlines()
    assert rows[0].split()[:4] == ["TIME", "CUSTOMER", "REGISTRY", "ACTION"]
    assert any("CLI Customer" in r and "manifest" in r and "vendor/oci" in r and " 200 " in r for r in rows[1:])
    as_json = json.loads(run(vendor_env, "logs", "--customer", customer_id, "-o", "json").stdout)
    assert {e["action"] for e in as_json} == {"manifest"}

    assert "revoked" in run(vendor_env, "customer", "revoke", customer_id).stdout
    assert pull_status(vendor_env, path, license_id) == 401
    assert "archived" in run(vendor_env, "customer", "archive", customer_id).stdout
    assert "active" in run(vendor_env, "customer", "restore", customer_id).stdout
    assert pull_status(vendor_env, path, license_id) == 200
    # Another team's token does not see or touch this customer.
    other = run(vendor_env, "customer", "revoke", customer_id, token="beta", check=False)
    assert other.returncode == 1 and " 404: " in other.stderr


def test_license_import_both_versions_and_tampering(vendor_env: VendorEnv, tmp_path: Path):
    key = rsa_key()
    pem = tmp_path / "vendor.pub"
    pem.write_text(public_pem(key))
    run(vendor_env, "app", "create", "kots-cli", "--kots-public-key", str(pem))
    for version in ("v1beta1", "v1beta2"):
        license_id = f"clikots{version}" + secrets.token_hex(12)
        vendor_env.canaries.append(license_id)
        good = tmp_path / f"{version}.yaml"
        good.write_text(
            kots_license(
                key,
                version,
                license_id=license_id,
                app_slug="kots-cli",
                name=f"Imported {version}",
                expires_at="2032-02-02T00:00:00Z",
            )
        )
        bad = tmp_path / f"{version}-tampered.yaml"
        later = {"entitlements": {"expires_at": {"value": "2099-01-01T00:00:00Z"}}}
        bad.write_text(
            kots_license(
                key,
                version,
                license_id=license_id,
                app_slug="kots-cli",
                name=f"Imported {version}",
                expires_at="2032-02-02T00:00:00Z",
                tamper=later,
            )
        )
        refused = run(vendor_env, "license", "import", str(bad), check=False)
        assert refused.returncode == 1
        assert f"POST {vendor_env.admin}/vendor/v3/license/import 400: " in refused.stderr
        assert "entitlements.expires_at" in refused.stderr
        done = run(vendor_env, "license", "import", str(good))
        assert f"Imported {version}" in done.stdout and "2032-02-02" in done.stdout
        assert "imported customer" in done.stdout
        # The license is now a credential: past auth, the unknown repository is what stops it.
        assert pull_status(vendor_env, "/v2/proxy/kots-cli/x/y/manifests/v1", license_id) == 404
    # A license signed by another key is refused.
    forged = tmp_path / "forged.yaml"
    forged.write_text(
        kots_license(
            rsa_key(), "v1beta2", license_id="forged" + secrets.token_hex(12), app_slug="kots-cli", name="Forged"
        )
    )
    out = run(vendor_env, "license", "import", str(forged), check=False)
    assert out.returncode == 1 and "signature" in out.stderr


def test_admin_token_create_works_on_the_store(vendor_env: VendorEnv):
    cfg = str(vendor_env.server.config_path)
    made = run(vendor_env, "admin", "token", "create", "--team", "gamma", "--config", cfg, token=None)
    token = made.stdout.strip()
    assert token.startswith("pgt_") and len(token) > 40 and "created team" in made.stderr
    assert json.loads(run(vendor_env, "app", "ls", "-o", "json", token=token).stdout) == []
    run(vendor_env, "app", "create", "gamma-app", token=token)
    assert [a["slug"] for a in json.loads(run(vendor_env, "app", "ls", "-o", "json", token=token).stdout)] == [
        "gamma-app"
    ]
    # The global --token flag works too, before or after the command.
    rows = run(vendor_env, "--token", token, "app", "ls", token="nope").stdout.splitlines()
    assert [r.split()[0] for r in rows[1:]] == ["gamma-app"]
    assert run(vendor_env, "customer", "ls", "--token", token, token="nope").returncode == 0
    # The token is stored hashed: its text is nowhere in the database files.
    db = vendor_env.server.db_path
    for f in db.parent.glob(db.name + "*"):
        assert token.encode() not in f.read_bytes()


def test_failures_are_reported_and_exit_non_zero(vendor_env: VendorEnv):
    none = run(vendor_env, "app", "ls", token=None, check=False)
    assert none.returncode == 1 and "PULLGATE_API_TOKEN" in none.stderr
    bad = run(vendor_env, "app", "ls", token="not-a-token", check=False)
    assert bad.returncode == 1
    assert f"GET {vendor_env.admin}/vendor/v3/apps 401: a valid API token is required" in bad.stderr
    invalid = run(
        vendor_env, "customer", "create", "--name", "x", "--app", "no-such-app", "--email", "bad", check=False
    )
    assert invalid.returncode == 1 and "appSlug" in invalid.stderr and "email" in invalid.stderr


def test_masked_prompt_on_a_terminal(vendor_env: VendorEnv):
    """With no secret flag on a terminal, the password is prompted for and never echoed."""
    import pty
    import select

    up = vendor_env.basic
    assert up.password
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PULLGATE_")}
    environ.update(PULLGATE_API_ORIGIN=vendor_env.admin, PULLGATE_API_TOKEN=vendor_env.tokens["alpha"])
    argv = [
        sys.executable,
        "-m",
        "proxy",
        "registry",
        "add",
        "other",
        "--endpoint",
        "tty.example.test",
        "--name",
        "tty-reg",
        "--url",
        up.url,
        "--insecure",
        "--username",
        "vendor",
    ]
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.chdir(REPO_ROOT)
        os.execve(sys.executable, argv, environ)  # noqa: S606 - the CLI under test
    out = b""
    try:
        deadline = time.monotonic() + 30
        sent = False
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not sent and b"Password:" in out:
                os.write(fd, up.password.encode() + b"\n")
                sent = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert sent, out
    assert os.waitstatus_to_exitcode(status) == 0, out
    vendor_env.assert_clean(out, "the terminal")
    assert b"tty-reg" in out
    assert run(vendor_env, "registry", "test", "tty-reg", "--image", "vendor/oci:v1").returncode == 0
