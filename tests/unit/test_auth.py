"""serve/auth.py against real JWTs (PyJWT), real RSA/EC keys (cryptography) and a real JWKS server
(http.server in a thread) — trying to get a token through that must not pass."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

import serve.auth as auth_module
from pipelines.config import Settings
from pipelines.errors import AuthError
from serve.auth import (
    MAX_TOKEN_BYTES,
    PERMISSIONS,
    ROLES,
    STAFF,
    ApiKey,
    ApiKeys,
    JwksCache,
    Principal,
    TokenAuthority,
    bearer_token,
)

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
ISS, AUD = "https://idp.example.org/realms/acme", "switchboard"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SWITCHBOARD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "data"))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ---------------------------------------------------------------- keys, tokens and a real JWKS server


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "rsa1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "weak": rsa.generate_private_key(public_exponent=65537, key_size=1024),
    }


def rsa_jwk(private: Any, kid: str, **extra: Any) -> dict[str, Any]:
    return {**RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "use": "sig", **extra}


def ec_jwk(private: Any, kid: str) -> dict[str, Any]:
    return {
        **ECAlgorithm.to_jwk(private.public_key(), as_dict=True),
        "kid": kid,
        "use": "sig",
        "alg": "ES256",
    }


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "tenant": "acme",
        "role": "agent",
        "sub": "user-1",
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "exp": now + 300,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(private: Any, kid: str | None = "k1", alg: str = "RS256", **over: Any) -> str:
    return jwt.encode(claims(**over), private, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], secret: bytes | None) -> str:
    """A JWT made by hand (PyJWT refuses to make these): HMAC-signed with ``secret``, or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) if secret else ""
    return f"{signing_input}.{signature}"


class _Jwks(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state = self.server.state  # type: ignore[attr-defined]
        state["hits"] += 1
        time.sleep(state["delay"])
        body = state["body"] if state["body"] is not None else json.dumps({"keys": state["keys"]}).encode()
        self.send_response(state["status"])
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class JwksServer:
    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
        self.server.state = self.state = {"keys": [], "status": 200, "delay": 0.0, "hits": 0, "body": None}  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/acme/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> int:
        return self.state["hits"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def idp(keys: dict[str, Any]):
    server = JwksServer()
    server.state["keys"] = [rsa_jwk(keys["rsa1"], "k1", alg="RS256"), ec_jwk(keys["ec"], "e1")]
    yield server
    server.close()


def oidc(url: str, clock: Clock | None = None, ttl_s: float = 60.0, **settings: Any) -> TokenAuthority:
    """Production mode: only the provider's JWKS (no dev token, no shared secret)."""
    s = Settings(jwt_jwks_url=url, jwt_issuer=ISS, jwt_audience=AUD, jwt_jwks_cache_s=ttl_s, **settings)
    cache = JwksCache(url, ttl_s=ttl_s, timeout_s=s.jwt_jwks_timeout_s, clock=clock or Clock())
    return TokenAuthority(None, s, jwks=cache)


def refused(
    authority: TokenAuthority, token: str | None, match: str, code: str = "unauthorized"
) -> AuthError:
    with pytest.raises(AuthError, match=match) as err:
        authority.authenticate(token)
    assert err.value.code == code
    if token and len(token) >= 8:
        assert token not in err.value.message and token[-8:] not in err.value.message  # never echoed
    return err.value


# ---------------------------------------------------------------- dev tokens (local mode) keep working


def test_dev_tokens_still_authenticate_in_local_mode():
    authority = TokenAuthority("dev-secret-token")
    tokens = authority.tokens()
    assert set(tokens) == {"agent", "supervisor", "customer"} and tokens["agent"] == "dev-secret-token"
    for role, token in tokens.items():
        assert authority.authenticate(token) == Principal("demo", role)
    assert authority.local and not authority.authenticate(tokens["customer"]).staff
    assert authority.derived("channels") == TokenAuthority("dev-secret-token").derived("channels")
    assert authority.derived("channels") != TokenAuthority("another-token").derived("channels")
    refused(authority, tokens["agent"] + "x", "missing or invalid token")
    refused(authority, None, "missing or invalid token")
    with pytest.raises(ValueError, match="development token is required"):
        TokenAuthority("")


def test_a_new_dev_token_never_starts_with_a_dash(tmp_path, monkeypatch):
    """``secrets.token_urlsafe`` begins with ``-`` one time in 64; ``--token -x…`` then fails on every CLI."""
    from serve.auth import resolve_dev_token
    from serve.cli import build_parser

    monkeypatch.setattr(auth_module.secrets, "token_urlsafe", lambda n: "-unlucky-draw")
    token = resolve_dev_token(Settings(data_dir=str(tmp_path)))
    assert not token.startswith("-") and token.endswith("-unlucky-draw")
    assert (tmp_path / "dev-token").read_text().strip() == token
    assert build_parser().parse_args(["tail", "ses_x", "--token", token]).token == token


def test_principal_keeps_positional_construction_and_gains_a_subject():
    assert Principal("demo", "agent") == Principal(tenant="demo", role="agent", subject=None)
    assert Principal("acme", "admin", "alice").subject == "alice"
    assert STAFF == {"agent", "supervisor", "admin"} and "service" in ROLES and "service" not in STAFF


@pytest.mark.parametrize(
    "settings",
    [{"jwt_secret": "s" * 32}, {"jwt_jwks_url": "http://127.0.0.1:9/jwks"}],
    ids=["shared-secret", "jwks"],
)
def test_dev_tokens_are_refused_once_real_tokens_are_configured(settings):
    local = TokenAuthority("dev-secret-token")
    authority = TokenAuthority("dev-secret-token", Settings(**settings))
    assert not authority.local and authority.tokens() == {}
    for token in local.tokens().values():
        refused(authority, token, "missing or invalid token")
    # a local mint (secret derived from the dev token) is refused too
    refused(authority, local.issue("demo", "admin"), "bad signature|not accepted here")
    assert authority.derived("channels") == local.derived(
        "channels"
    )  # the channel secret fallback still works


def test_jwt_secret_must_be_long():
    with pytest.raises(ValueError):
        Settings(jwt_secret="short")


# ---------------------------------------------------------------- issue: local HS256 minting


def test_issue_round_trips_and_every_replica_agrees():
    authority = TokenAuthority("dev-secret-token")
    token = authority.issue("acme", "supervisor", subject="alice", ttl_s=60)
    assert authority.authenticate(token) == Principal("acme", "supervisor", "alice")
    assert TokenAuthority("dev-secret-token").authenticate(token).tenant == "acme"  # another replica
    refused(TokenAuthority("another-dev-token"), token, "bad signature")
    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 60 and payload["role"] == "supervisor" and "jti" in payload
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_issue_follows_the_configured_claims_issuer_and_audience():
    s = Settings(
        jwt_secret="x" * 40,
        jwt_issuer=ISS,
        jwt_audience=AUD,
        jwt_tenant_claim="org.id",
        jwt_role_claim="app_role",
    )
    authority = TokenAuthority(None, s)
    token = authority.issue("acme", "admin")
    payload = jwt.decode(token, "x" * 40, algorithms=["HS256"], audience=AUD, issuer=ISS)
    assert payload["org"] == {"id": "acme"} and payload["app_role"] == "admin"
    assert authority.authenticate(token) == Principal("acme", "admin")


def test_issue_refuses_what_authenticate_would_refuse():
    authority = TokenAuthority("dev-secret-token")
    for tenant in ("acme:evil", "", "x" * 65, "..", "a/b"):
        with pytest.raises(ValueError, match="tenant"):
            authority.issue(tenant, "agent")
    with pytest.raises(ValueError, match="role"):
        authority.issue("acme", "root")
    with pytest.raises(ValueError, match="ttl"):
        authority.issue("acme", "agent", ttl_s=0)
    with pytest.raises(ValueError, match="OIDC provider"):
        oidc("http://127.0.0.1:9/jwks").issue("acme", "agent")


# ---------------------------------------------------------------- HS256: time, issuer, audience, claims


def hs_authority(**settings: Any) -> TokenAuthority:
    return TokenAuthority(None, Settings(jwt_secret="k" * 32, jwt_issuer=ISS, jwt_audience=AUD, **settings))


def hs(**over: Any) -> str:
    return jwt.encode(claims(**over), "k" * 32, algorithm="HS256")


def test_a_valid_shared_secret_token_passes():
    assert hs_authority().authenticate(hs()) == Principal("acme", "agent", "user-1")


def test_time_claims_are_enforced_with_the_configured_leeway():
    now = int(time.time())
    refused(hs_authority(), hs(exp=now - 120), "expired")
    refused(hs_authority(), hs(nbf=now + 120), "not valid yet")
    refused(hs_authority(), hs(iat=now + 120), "not valid yet")
    refused(hs_authority(), hs(exp=None), "no `exp` claim")
    refused(hs_authority(), hs(iat="yesterday"), "malformed `iat`")
    assert hs_authority(jwt_leeway_s=30).authenticate(hs(exp=now - 10)).tenant == "acme"
    refused(hs_authority(jwt_leeway_s=0), hs(exp=now - 10), "expired")


def test_issuer_and_audience_are_enforced():
    refused(hs_authority(), hs(aud="another-app"), "wrong audience")
    refused(hs_authority(), hs(aud=None), "no `aud` claim")
    refused(hs_authority(), hs(iss="https://evil.example.org"), "wrong issuer")
    refused(hs_authority(), hs(iss=None), "no `iss` claim")
    assert hs_authority().authenticate(hs(aud=["other", AUD])).tenant == "acme"
    lax = TokenAuthority(None, Settings(jwt_secret="k" * 32))  # nothing configured: no audience accepted
    refused(lax, hs(), "SWITCHBOARD_JWT_AUDIENCE is not set")
    assert lax.authenticate(hs(aud=None, iss="anyone")).role == "agent"


@pytest.mark.parametrize(
    ("tenant", "why"),
    [
        ("acme:evil", "malformed `tenant`"),
        ("x" * 65, "malformed `tenant`"),
        ("", "malformed `tenant`"),
        ("..", "malformed `tenant`"),
        ("acme\n", "malformed `tenant`"),
        ("ac me", "malformed `tenant`"),
        (42, "malformed `tenant`"),
        (["acme"], "malformed `tenant`"),
        (None, "no `tenant` claim"),
    ],
)
def test_malformed_tenants_are_refused(tenant, why):
    refused(hs_authority(), hs(tenant=tenant), why)


def test_the_longest_and_oddest_legal_tenant_passes():
    tenant = "A-z_0." + "x" * 58
    assert hs_authority().authenticate(hs(tenant=tenant)).tenant == tenant


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("supervisor", "supervisor"),
        (["offline_access", "agent", "supervisor", "uma_authorization"], "supervisor"),
        (["customer", "admin", "agent"], "admin"),
        (["service", "customer"], "service"),
    ],
)
def test_roles_and_role_lists(role, expected):
    assert hs_authority().authenticate(hs(role=role)).role == expected


@pytest.mark.parametrize(
    ("role", "why"),
    [
        ("root", "holds no known role"),
        ("Agent", "holds no known role"),
        (["offline_access", "root"], "holds no known role"),
        ([], "holds no known role"),
        (7, "malformed `role`"),
        (["agent", 7], "malformed `role`"),
        ({"name": "agent"}, "malformed `role`"),
        (None, "no `role` claim"),
    ],
)
def test_unknown_or_malformed_roles_are_refused(role, why):
    refused(hs_authority(), hs(role=role), why)


def test_a_roles_list_is_read_when_there_is_no_role_claim_and_nested_claims_work():
    assert hs_authority().authenticate(hs(role=None, roles=["agent", "supervisor"])).role == "supervisor"
    keycloak = hs_authority(jwt_role_claim="realm_access.roles", jwt_tenant_claim="https://acme.org/tenant")
    token = hs(
        role=None,
        tenant=None,
        realm_access={"roles": ["default", "admin"]},
        **{"https://acme.org/tenant": "t1"},
    )
    assert keycloak.authenticate(token) == Principal("t1", "admin", "user-1")
    refused(hs_authority(jwt_role_claim="groups"), hs(), "no `groups` claim")


def test_malformed_subjects_are_refused():
    refused(hs_authority(), hs(sub=12), "malformed `sub`")
    refused(hs_authority(), hs(sub="u" * 300), "malformed `sub`")
    assert hs_authority().authenticate(hs(sub=None)).subject is None


# ---------------------------------------------------------------- forged, broken and hostile tokens


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_unsigned_tokens_are_refused(alg):
    token = forge({"alg": alg, "typ": "JWT"}, claims(), None)
    refused(hs_authority(), token, "alg: none")
    refused(TokenAuthority("dev-secret-token"), token, "alg: none")


def test_hostile_claims_behind_a_valid_signature_are_refused_cleanly():
    secret = b"k" * 32
    header = {"alg": "HS256", "typ": "JWT"}
    refused(hs_authority(), forge(header, {**claims(), "exp": 1e400}, secret), "malformed")
    refused(hs_authority(), forge(header, {**claims(), "nbf": "soon"}, secret), "malformed")
    payload = json.dumps(claims())[:-1] + ', "x": ' + "[" * 1500 + "]" * 1500 + "}"
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(payload.encode())}"
    token = f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"
    assert len(token) < MAX_TOKEN_BYTES
    refused(hs_authority(), token, "malformed JWT")


def test_a_token_signed_with_another_secret_is_refused():
    refused(hs_authority(), jwt.encode(claims(), "z" * 32, algorithm="HS256"), "bad signature")
    tampered = hs().split(".")
    tampered[1] = b64(json.dumps(claims(role="admin")).encode())
    refused(hs_authority(), ".".join(tampered), "bad signature")


def test_only_hs256_among_the_shared_secret_algorithms():
    token = jwt.encode(claims(), "k" * 64, algorithm="HS512")
    refused(
        TokenAuthority(None, Settings(jwt_secret="k" * 64, jwt_issuer=ISS, jwt_audience=AUD)),
        token,
        "HS256 only",
    )


def test_asymmetric_tokens_need_a_jwks(keys):
    refused(hs_authority(), sign(keys["rsa1"]), "need SWITCHBOARD_JWT_JWKS_URL")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b.c",
        "...",
        "..",
        "eyJ.eyJ.sig",
        "Bearer x",
        "sk_",
        "sk_abcd_",
        "\x00\x01\x02",
        "tökén.tökén.tökén",
        b64(b'{"alg":"HS256"}') + ".bm90IGpzb24." + "sig",  # payload is not JSON
        b64(b"[1,2,3]") + "." + b64(b"{}") + ".sig",  # header is not an object
        b64(b'{"alg":"HS256"}') + "." + b64(b"[1]") + ".sig",  # payload is not an object
        b64(b'{"alg":7}') + "." + b64(b"{}") + ".sig",
        b64(b'{"alg":"XS999"}') + "." + b64(b"{}") + ".sig",
        b64(b'{"typ":"JWT"}') + "." + b64(b"{}") + ".sig",
        "x" * 2000,
        b64(b"[" * 3000 + b"]" * 3000)
        + "."
        + b64(b"{}")
        + ".sig",  # nesting deeper than json's recursion limit
        b64(b'{"alg":"HS256","kid":' + b"[" * 2400 + b"]" * 2400 + b"}") + "." + b64(b"{}") + ".sig",
    ],
)
def test_garbage_is_refused_without_echoing_it(token):
    for authority in (TokenAuthority("dev-secret-token"), hs_authority()):
        with pytest.raises(AuthError) as err:
            authority.authenticate(token)
        assert err.value.code == "unauthorized"
        assert token not in err.value.message or len(token) < 3


def test_huge_tokens_are_refused_before_any_parsing_or_fetching(idp, keys):
    authority = oidc(idp.url)
    big = sign(keys["rsa1"], padding="p" * MAX_TOKEN_BYTES)
    refused(authority, big, "longer than 8192 bytes")
    refused(authority, "sk_" + "a" * MAX_TOKEN_BYTES, "longer than 8192 bytes")
    assert asyncio.run(_async_refused(authority, big))
    assert idp.hits == 0


async def _async_refused(authority: TokenAuthority, token: str) -> bool:
    with pytest.raises(AuthError, match="longer than"):
        await authority.authenticate_async(token)
    return True


def test_authorization_headers():
    assert bearer_token("Bearer abc", None) == "abc" and bearer_token("bearer  abc ", "q") == "abc"
    assert bearer_token("Basic abc", "q") is None and bearer_token(None, "q") == "q"
    assert bearer_token(None, None) is None and bearer_token("Bearer ", None) is None


# ---------------------------------------------------------------- OIDC: a real JWKS server


def test_provider_tokens_pass_and_the_keys_are_cached(idp, keys):
    authority = oidc(idp.url)
    assert authority.authenticate(sign(keys["rsa1"])) == Principal("acme", "agent", "user-1")
    assert (
        authority.authenticate(sign(keys["ec"], kid="e1", alg="ES256", role="supervisor")).role
        == "supervisor"
    )
    for _ in range(20):
        authority.authenticate(sign(keys["rsa1"]))
    assert idp.hits == 1


def test_key_rotation_new_kid_is_fetched_and_removed_kid_expires_with_the_cache(idp, keys):
    clock = Clock()
    authority = oidc(idp.url, clock, ttl_s=60)
    old = sign(keys["rsa1"], kid="k1")
    assert authority.authenticate(old).tenant == "acme" and idp.hits == 1
    new = sign(keys["rsa2"], kid="k2")
    refused(authority, new, "unknown `kid`")  # within the refetch cooldown of the first fetch: no new fetch
    assert idp.hits == 1
    clock.t += 2
    refused(authority, new, "unknown `kid`")  # the provider does not publish k2 yet (one refetch tried)
    assert idp.hits == 2
    idp.state["keys"] = [rsa_jwk(keys["rsa1"], "k1"), rsa_jwk(keys["rsa2"], "k2")]  # rotation: k2 published
    clock.t += 2  # past the refetch cooldown
    assert authority.authenticate(new).tenant == "acme" and idp.hits == 3  # one refetch on the unknown kid
    idp.state["keys"] = [rsa_jwk(keys["rsa2"], "k2")]  # k1 retired
    clock.t += 30
    assert authority.authenticate(old).tenant == "acme"  # still cached: the TTL is not up
    clock.t += 31
    refused(authority, old, "unknown `kid`")  # TTL up: refetched, k1 is gone
    assert authority.authenticate(new).tenant == "acme"


def test_unknown_kids_cannot_flood_the_provider(idp, keys):
    clock = Clock()
    authority = oidc(idp.url, clock)
    authority.authenticate(sign(keys["rsa1"]))
    clock.t += 2
    for i in range(50):
        refused(authority, sign(keys["rsa2"], kid=f"random-{i}"), "unknown `kid`")
    assert idp.hits == 2  # one refetch, then the cooldown holds
    clock.t += 2
    refused(authority, sign(keys["rsa2"], kid="random-x"), "unknown `kid`")
    assert idp.hits == 3


def test_concurrent_requests_share_one_refetch(idp, keys):
    clock = Clock()
    authority = oidc(idp.url, clock)
    authority.authenticate(sign(keys["rsa1"]))
    idp.state["keys"] = [rsa_jwk(keys["rsa1"], "k1"), rsa_jwk(keys["rsa2"], "k2")]
    idp.state["delay"] = 0.1
    clock.t += 2
    token = sign(keys["rsa2"], kid="k2")
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(authority.authenticate(token))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and idp.hits == 2


def test_algorithm_confusion_hs256_signed_with_the_public_key_is_refused(idp, keys):
    authority = oidc(idp.url)
    public = keys["rsa1"].public_key()
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk_json = json.dumps(rsa_jwk(keys["rsa1"], "k1")).encode()
    for secret in (pem, pem.strip(), jwk_json):
        for header in ({"alg": "HS256", "kid": "k1"}, {"alg": "HS256"}, {"alg": "HS512", "kid": "k1"}):
            refused(authority, forge(header, claims(role="admin"), secret), "not accepted here")
        # an RS256 header over an HMAC made with the public key
        refused(
            authority, forge({"alg": "RS256", "kid": "k1"}, claims(role="admin"), secret), "bad signature"
        )
    # with a shared secret configured too, HS256 is checked against that secret only, never the public key
    both = oidc(idp.url, jwt_secret="k" * 32)
    refused(both, forge({"alg": "HS256", "kid": "k1"}, claims(role="admin"), pem), "bad signature")
    assert both.authenticate(hs()).role == "agent" and both.authenticate(sign(keys["rsa1"])).role == "agent"


def test_a_token_whose_algorithm_does_not_match_its_key_is_refused(idp, keys):
    authority = oidc(idp.url)
    # the EC key's kid with an RS256 token, and the RSA key's kid with an ES256 token
    refused(authority, sign(keys["rsa1"], kid="e1"), "does not match its key")
    refused(authority, sign(keys["ec"], kid="k1", alg="ES256"), "does not match its key")
    refused(authority, sign(keys["rsa1"], kid="k1", alg="PS256"), "does not match its key")
    refused(
        authority, forge({"alg": "RS256", "kid": 7}, claims(), None), "not a well-formed JWT|malformed `kid`"
    )


def test_symmetric_and_encryption_keys_in_the_jwks_are_ignored(idp, keys):
    secret = b"published-by-mistake-0123456789ab"
    idp.state["keys"] = [
        {"kty": "oct", "kid": "s1", "k": b64(secret)},
        rsa_jwk(keys["rsa2"], "enc", use="enc"),
        rsa_jwk(keys["rsa1"], "k1"),
    ]
    authority = oidc(idp.url)
    refused(authority, forge({"alg": "HS256", "kid": "s1"}, claims(), secret), "not accepted here")
    refused(authority, sign(keys["rsa2"], kid="enc"), "unknown `kid`")
    assert authority.authenticate(sign(keys["rsa1"])).tenant == "acme"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the attacker's side signing
def test_weak_provider_keys_are_refused(idp, keys):
    idp.state["keys"] = [rsa_jwk(keys["weak"], "w1")]
    refused(oidc(idp.url), sign(keys["weak"], kid="w1"), "unusable")


def test_kid_is_needed_only_when_the_provider_has_several_keys(idp, keys):
    refused(oidc(idp.url), sign(keys["rsa1"], kid=None), "no `kid` header")
    idp.state["keys"] = [rsa_jwk(keys["rsa1"], "k1")]
    assert oidc(idp.url).authenticate(sign(keys["rsa1"], kid=None)).tenant == "acme"


def test_provider_tokens_go_through_the_same_claim_checks(idp, keys):
    authority = oidc(idp.url)
    refused(authority, sign(keys["rsa1"], tenant="acme:evil"), "malformed `tenant`")
    refused(authority, sign(keys["rsa1"], role="root"), "no known role")
    refused(authority, sign(keys["rsa1"], aud="other"), "wrong audience")
    refused(authority, sign(keys["rsa1"], exp=int(time.time()) - 600), "expired")
    refused(authority, sign(keys["rsa2"], kid="k1"), "bad signature")  # right kid, wrong private key


def test_an_unreachable_provider_is_named_in_the_error(keys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/jwks"
    clock = Clock()
    authority = oidc(url, clock)
    refused(authority, sign(keys["rsa1"]), f"JWKS at {re.escape(url)} is unreachable")
    refused(
        authority, sign(keys["rsa1"]), "is unreachable"
    )  # within the cooldown: no new attempt, same answer
    refused(authority, hs(), "not accepted here")  # HS256 still refused, not "unreachable"


def test_provider_failures_say_what_is_wrong(idp, keys):
    token = sign(keys["rsa1"])
    idp.state["status"] = 500
    refused(oidc(idp.url), token, f"JWKS at {re.escape(idp.url)} answered HTTP 500")
    idp.state["status"], idp.state["body"] = 200, b"<html>login</html>"
    refused(oidc(idp.url), token, "is not a JWKS")
    idp.state["body"] = json.dumps({"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB"}]}).encode()
    refused(oidc(idp.url), token, "lists no usable signing key")
    idp.state["body"], idp.state["delay"] = None, 1.0
    refused(oidc(idp.url, jwt_jwks_timeout_s=0.2), token, "did not answer within 0.2 s")


def test_stale_keys_bridge_a_short_provider_outage_only(idp, keys):
    clock = Clock()
    authority = oidc(idp.url, clock, ttl_s=60)
    token = sign(keys["rsa1"])
    assert authority.authenticate(token).tenant == "acme"
    idp.close()
    clock.t += 70  # TTL up, provider down: the last keys serve one more TTL
    assert authority.authenticate(token).tenant == "acme"
    clock.t += 60
    refused(authority, token, "unreachable")


def test_authenticate_async_checks_provider_tokens_off_the_event_loop(idp, keys):
    authority = oidc(idp.url)

    async def main() -> list[Principal]:
        return await asyncio.gather(*(authority.authenticate_async(sign(keys["rsa1"])) for _ in range(5)))

    assert {p.tenant for p in asyncio.run(main())} == {"acme"}
    local = TokenAuthority("dev-secret-token")
    assert asyncio.run(local.authenticate_async("dev-secret-token")) == Principal("demo", "agent")


def test_settings_from_the_environment_build_a_provider_authority(idp, keys, monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_JWT_JWKS_URL", idp.url)
    monkeypatch.setenv("SWITCHBOARD_JWT_AUDIENCE", AUD)
    monkeypatch.setenv("SWITCHBOARD_JWT_ISSUER", ISS)
    monkeypatch.setenv("SWITCHBOARD_JWT_ROLE_CLAIM", "groups")
    authority = TokenAuthority.from_settings(Settings())
    assert not authority.local
    assert authority.authenticate(sign(keys["rsa1"], groups=["admin"])).role == "admin"


# ---------------------------------------------------------------- API keys


def key_file(tmp_path: Path, entries: list[ApiKey], fmt: str = "yaml") -> Path:
    rows = [{"id": e.id, "tenant": e.tenant, "role": e.role, "sha256": e.sha256} for e in entries]
    path = tmp_path / f"keys.{fmt}"
    path.write_text(json.dumps(rows) if fmt == "json" else "".join(f"- {json.dumps(r)}\n" for r in rows))
    return path


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_api_keys_authenticate_as_service(tmp_path, fmt):
    key, entry = ApiKeys.new("acme")
    other_key, other = ApiKeys.new("globex", role="agent")
    authority = TokenAuthority(
        "dev-secret-token", Settings(api_keys_file=key_file(tmp_path, [entry, other], fmt))
    )
    principal = authority.authenticate(key)
    assert principal == Principal("acme", "service", f"key:{entry.id}") and not principal.staff
    assert principal.may("webhook.email") and not principal.may("session.watch")
    assert authority.authenticate(other_key).role == "agent"
    assert key not in key_file(tmp_path, [entry], fmt).read_text()  # only the hash is stored


def test_wrong_unknown_and_malformed_api_keys_are_refused(tmp_path):
    key, entry = ApiKeys.new("acme")
    authority = TokenAuthority("dev-secret-token", Settings(api_keys_file=key_file(tmp_path, [entry])))
    secret = key.split("_", 2)[2]
    wrong_secret = refused(authority, key[:-4] + "AAAA", "invalid API key")
    unknown_id = refused(authority, f"sk_ffffffffffff_{secret}", "invalid API key")
    assert wrong_secret.message == unknown_id.message  # which ids exist is not revealed
    refused(authority, f"sk_{entry.id}", "expected `sk_<id>_<secret>`")
    refused(authority, f"sk_{entry.id}_", "expected `sk_<id>_<secret>`")
    refused(authority, f"sk_a!b_{secret}", "expected `sk_<id>_<secret>`")
    refused(authority, entry.sha256, "missing or invalid token")  # the stored hash is not a key


def test_api_keys_are_revoked_by_editing_the_file_and_a_broken_file_refuses_all(tmp_path):
    key1, e1 = ApiKeys.new("acme")
    key2, e2 = ApiKeys.new("acme")
    path = key_file(tmp_path, [e1, e2])
    authority = TokenAuthority("dev-secret-token", Settings(api_keys_file=path))
    assert authority.authenticate(key1).tenant == authority.authenticate(key2).tenant == "acme"
    key_file(tmp_path, [e2])
    refused(authority, key1, "unknown or revoked")
    assert authority.authenticate(key2).tenant == "acme"
    path.write_text("- {id: oops")
    refused(authority, key2, "key file .* is unreadable or invalid")
    key_file(tmp_path, [e2])
    assert authority.authenticate(key2).tenant == "acme"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{id: a}", "must be a list"),
        ("- just-a-string", "not a mapping"),
        ("- {id: ab, tenant: acme, sha256: " + "a" * 64 + "}", "`id` must be"),
        ("- {id: 1234, tenant: acme, sha256: " + "a" * 64 + "}", "`id` must be a string"),
        ("- {id: abcd, tenant: acme, sha256: " + "1" * 64 + "}", "`sha256` must be a string"),
        ("- {id: abcd, tenant: 'ac:me', sha256: " + "a" * 64 + "}", "`tenant` must match"),
        ("- {id: abcd, tenant: acme, role: root, sha256: " + "a" * 64 + "}", "`role` must be one of"),
        ("- {id: abcd, tenant: acme, sha256: sk_abcd_secret}", "`sha256` must be 64 hex"),
        ("- {id: abcd, tenant: acme, key: sk_abcd_x, sha256: " + "a" * 64 + "}", "unknown field"),
        (
            "- {id: abcd, tenant: acme, sha256: "
            + "a" * 64
            + "}\n- {id: abcd, tenant: b, sha256: "
            + "b" * 64
            + "}",
            "appears twice",
        ),
        ("- [unclosed", "not YAML or JSON"),
    ],
)
def test_invalid_key_files_fail_at_start(tmp_path, text, why):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=why):
        TokenAuthority("dev-secret-token", Settings(api_keys_file=path))


def test_a_missing_key_file_fails_at_start(tmp_path):
    with pytest.raises(ValueError, match="cannot read the API key file"):
        TokenAuthority("dev-secret-token", Settings(api_keys_file=tmp_path / "nope.yaml"))


def test_an_empty_key_file_and_a_keys_mapping_are_fine(tmp_path):
    assert len(ApiKeys.parse("")) == 0
    _, entry = ApiKeys.new("acme")
    wrapped = {"keys": [{"id": entry.id, "tenant": "acme", "sha256": entry.sha256}]}
    assert len(ApiKeys.parse(json.dumps(wrapped))) == 1


# ---------------------------------------------------------------- roles and permissions


def test_the_permission_table():
    customer, agent, service, admin = (Principal("t", r) for r in ("customer", "agent", "service", "admin"))
    assert customer.may("session.customer") and not any(
        customer.may(a) for a in PERMISSIONS if a != "session.customer"
    )
    assert {a for a in PERMISSIONS if service.may(a)} == {"webhook.email", "webhook.voice"}
    assert all(admin.may(a) for a in PERMISSIONS)
    assert agent.may("session.watch") and agent.may("feedback") and not agent.may("admin")
    assert set(PERMISSIONS) >= {
        "session.customer",
        "session.watch",
        "session.answer",
        "feedback",
        "queues",
        "webhook.email",
        "recording.read",
        "admin",
    }
    with pytest.raises(ValueError, match="unknown action"):
        agent.may("sessions.watch")
    with pytest.raises(AuthError) as err:
        customer.require("session.watch")
    assert err.value.code == "forbidden" and "agent" in err.value.message
    agent.require("session.watch")


def test_the_module_docstring_documents_the_permission_table():
    doc = auth_module.__doc__ or ""
    rows = dict(re.findall(r"^\| `([a-z.]+)` \| ([a-z, ]+) \|", doc, re.M))
    assert set(rows) == set(PERMISSIONS)
    for action, roles in rows.items():
        assert set(roles.split(", ")) == PERMISSIONS[action], action


# ---------------------------------------------------------------- CLI


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "serve.auth", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("args", [["--help"], ["issue", "--help"], ["new-key", "--help"]])
def test_cli_help(args):
    result = run_cli(*args)
    assert result.returncode == 0 and "usage: python -m serve.auth" in result.stdout


def test_cli_issue_mints_a_token_the_server_accepts(tmp_path):
    env = {"SWITCHBOARD_DEV_TOKEN": "dev-secret-token", "SWITCHBOARD_DATA_DIR": str(tmp_path)}
    result = run_cli("issue", "--tenant", "acme", "--role", "supervisor", "--ttl", "120", env=env)
    assert result.returncode == 0, result.stderr
    principal = TokenAuthority("dev-secret-token").authenticate(result.stdout.strip())
    assert principal == Principal("acme", "supervisor")
    bad = run_cli("issue", "--tenant", "ac:me", "--role", "agent", env=env)
    assert bad.returncode == 2 and "tenant must match" in bad.stderr


def test_cli_issue_reads_the_dev_token_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "dev-token").write_text("file-dev-token\n")
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path))
    assert auth_module.main(["issue", "--tenant", "acme", "--role", "customer", "--subject", "c-1"]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenAuthority("file-dev-token").authenticate(token) == Principal("acme", "customer", "c-1")
    monkeypatch.setenv("SWITCHBOARD_JWT_JWKS_URL", "http://127.0.0.1:9/jwks")
    assert auth_module.main(["issue", "--tenant", "acme", "--role", "agent"]) == 2
    assert "OIDC provider" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_cli_new_key_prints_a_key_once_and_its_file_entry(tmp_path, fmt):
    result = run_cli("new-key", "--tenant", "acme", "--format", fmt)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    key, entry = lines[1], lines[3]
    assert key.startswith("sk_") and key not in entry
    path = tmp_path / f"keys.{fmt}"
    path.write_text(entry + "\n" if fmt == "yaml" else f"[{entry}]")
    principal = TokenAuthority("dev-secret-token", Settings(api_keys_file=path)).authenticate(key)
    assert principal.tenant == "acme" and principal.role == "service"
