"""API tokens over real HTTP: the login for scripts, bearer authentication with the user's
role, revocation and expiry, and the wall between user and node tokens."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import urllib.request

from sbr_core import apitokens
from sbr_core.db.schema import ApiToken, AuditLog, User
from sbr_core.engine import nodes
from tests.api_server import PASSWORD, ApiServer


def test_a_token_from_user_name_and_password_acts_as_that_user(api_server: ApiServer) -> None:
    status, answer = api_server.call("POST", "/tokens", {
        "username": "operator", "password": PASSWORD, "name": "nightly script"})
    assert status == 201, answer
    token = answer["token"]
    assert token.startswith("sbru_") and len(token) == 5 + 43
    assert answer["username"] == "operator" and answer["role"] == "operator"
    expires = dt.datetime.fromisoformat(answer["expires_at"].removesuffix("Z"))
    assert dt.timedelta(days=89) < expires - dt.datetime.now(dt.UTC).replace(tzinfo=None) \
        <= dt.timedelta(days=90)

    request = urllib.request.Request(api_server.url + "/api/v1/me",  # noqa: S310 - http
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request) as response:  # noqa: S310 - loopback
        me = json.loads(response.read())
        assert response.headers.get("Set-Cookie") is None, "a bearer request made a session"
    assert me["username"] == "operator" and "operate" in me["permissions"]

    row = ApiToken.get(ApiToken.id == answer["id"])
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert row.name == "nightly script" and row.last_used_at is not None
    assert token not in json.dumps([r.__data__ for r in ApiToken.select()], default=str)
    entry = AuditLog.get(AuditLog.action == "token.create")
    assert entry.username == "operator" and entry.target == f"token {row.id}"
    assert token not in json.dumps(entry.detail)


def test_a_wrong_password_is_refused_with_401_and_audited(api_server: ApiServer) -> None:
    status, answer = api_server.call("POST", "/tokens",
                                     {"username": "admin", "password": "not it at all"})
    assert (status, answer) == (401, {"error": "wrong user name or password"})
    status, answer = api_server.call("POST", "/tokens",
                                     {"username": "nobody", "password": PASSWORD})
    assert status == 401
    failed = AuditLog.select().where(AuditLog.action == "login.failed")
    assert sorted(r.username for r in failed) == ["admin", "nobody"]
    assert all(r.detail == {"via": "api-token"} for r in failed)
    assert ApiToken.select().count() == 0


def test_repeated_failures_are_throttled(api_server: ApiServer) -> None:
    codes = [api_server.call("POST", "/tokens", {"username": "viewer",
                                                 "password": f"guess {i} wrong"})[0]
             for i in range(6)]
    assert codes == [401] * 5 + [429]
    status, _ = api_server.call("POST", "/tokens", {"username": "viewer", "password": PASSWORD})
    assert status == 429, "the right password got through a throttled name"


def test_bad_token_requests_name_the_field(api_server: ApiServer) -> None:
    cases = [
        ({}, "username: required"),
        ({"username": "admin"}, "password: required"),
        ({"username": "admin", "password": PASSWORD, "name": 5}, "name: must be text"),
        ({"username": "admin", "password": PASSWORD, "expires_in_days": 0},
         "expires_in_days: must be a whole number from 1 to 3650"),
        ({"username": "admin", "password": PASSWORD, "name": "x" * 101},
         "name: at most 100 characters"),
    ]
    for body, message in cases:
        status, answer = api_server.call("POST", "/tokens", body)
        assert status == 400 and message in answer["error"], (body, answer)
    status, answer = api_server.call("POST", "/tokens", raw=b"{not json")
    assert status == 400 and "request body must be a JSON object" in answer["error"]
    assert ApiToken.select().count() == 0, "a refused request left a token behind"


def test_a_revoked_token_is_refused(api_server: ApiServer) -> None:
    token = api_server.token("viewer")
    assert api_server.call("GET", "/me", token=token)[0] == 200
    status, answer = api_server.call("DELETE", "/tokens/current", token=token)
    assert status == 200 and answer["state"] == "revoked"
    status, answer = api_server.call("GET", "/me", token=token)
    assert (status, answer) == (401, {"error": "this API token was revoked"})
    entry = AuditLog.get(AuditLog.action == "token.revoke")
    assert entry.username == "viewer" and entry.detail["owner"] == "viewer"


def test_expired_tokens_and_disabled_users_are_refused(api_server: ApiServer) -> None:
    admin = User.get(User.username == "admin")
    row, token = apitokens.create_token(admin, name="short", days=1)
    assert api_server.call("GET", "/me", token=token)[0] == 200
    ApiToken.update(expires_at=dt.datetime(2000, 1, 1)).where(ApiToken.id == row.id).execute()
    assert api_server.call("GET", "/me", token=token) == \
        (401, {"error": "this API token has expired"})

    viewer_token = api_server.token("viewer")
    User.update(active=False).where(User.username == "viewer").execute()
    assert api_server.call("GET", "/me", token=viewer_token) == \
        (401, {"error": "the user of this API token is disabled"})
    assert api_server.call("GET", "/me", token="sbru_" + "A" * 43) == \
        (401, {"error": "unknown API token"})
    assert api_server.call("GET", "/me", token="")[0] == 401


def test_node_tokens_are_not_user_tokens_nor_the_other_way(api_server: ApiServer) -> None:
    _, node_token = nodes.add_node("n1")
    status, answer = api_server.call("GET", "/me", token=node_token)
    assert status == 401 and "not an API token" in answer["error"]
    status, answer = api_server.call("POST", "/policies", {"name": "x"}, token=node_token)
    assert status == 401
    status, answer = api_server.call("POST", "/node/claim", {}, user="admin")
    assert status == 401 and "not a node token" in answer["error"]


def test_roles_apply_to_tokens_as_to_sessions(api_server: ApiServer) -> None:
    status, answer = api_server.call("POST", "/policies", {"name": "p"}, user="viewer")
    assert status == 403 and "configure" in answer["error"]
    assert api_server.call("GET", "/policies", user="viewer") == (200, [])
    assert api_server.call("GET", "/audit", user="viewer")[0] == 403
    assert api_server.call("GET", "/audit", user="admin")[0] == 200


def test_users_list_and_revoke_their_own_tokens_only(api_server: ApiServer) -> None:
    viewer = api_server.token("viewer")
    operator = api_server.token("operator")
    status, listed = api_server.call("GET", "/tokens", token=viewer)
    assert status == 200 and len(listed) == 1
    assert listed[0]["name"] == "test-viewer" and listed[0]["current"] is True
    assert listed[0]["state"] == "active"
    assert not {"token", "token_hash"} & set(listed[0])
    operator_id = api_server.call("GET", "/tokens", token=operator)[1][0]["id"]

    status, answer = api_server.call("DELETE", f"/tokens/{operator_id}", token=viewer)
    assert status == 404 and f"no API token with id {operator_id}" in answer["error"]
    assert api_server.call("GET", "/me", token=operator)[0] == 200
    status, answer = api_server.call("DELETE", "/tokens/nine", token=viewer)
    assert status == 400 and "token:" in answer["error"]

    # admin has manage-users: it may revoke anyone's
    assert api_server.call("DELETE", f"/tokens/{operator_id}", user="admin")[0] == 200
    assert api_server.call("GET", "/me", token=operator)[0] == 401
    entry = AuditLog.get(AuditLog.action == "token.revoke")
    assert entry.username == "admin" and entry.detail["owner"] == "operator"
