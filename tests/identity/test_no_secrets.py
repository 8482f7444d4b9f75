"""No issued secret - nor any 8-character piece of one - may appear in the SQLite files or the decision log."""

from __future__ import annotations

from pathlib import Path

from stockade.security import keys
from stockade.security.secrets import shared_secrets
from stockade.storage.records import OAuthClient, SigningKey
from tests.identity.support import keyed_gateway

WINDOW = 8


def pieces(secret: str) -> set[str]:
    random_part = secret.split("_", 2)[2]
    return {random_part[i : i + WINDOW] for i in range(len(random_part) - WINDOW + 1)}


def test_no_issued_secret_in_sqlite_or_decision_log(tmp_path: Path) -> None:
    stages = "- use: api_key\n  config: {query_param: api_key}"
    with keyed_gateway(tmp_path, stages, storage="sqlite:///state/stockade.db") as env:
        services = env.gw.services
        secrets = shared_secrets(services)
        store = env.service.store
        live = env.issue(scopes=["books:read"])
        revoked = env.issue()
        env.run(env.service.revoke_key(revoked.secret))
        rotated = env.run(env.service.rotate_key(live.record.id, overlap=60))
        admin = env.run(env.service.create_admin_token("ops", "admin"))
        client_secret = keys.generate("secret")
        client = OAuthClient(
            "cl_1", "svc", "client_secret_basic", 0.0, ("books:read",), keys.hash_secret(secrets.pepper, client_secret)
        )
        env.run(store.create_client(client, actor="test", at=0.0))
        private_pem = "-----BEGIN PRIVATE KEY-----\n" + keys.generate("secret") + "\n-----END PRIVATE KEY-----\n"
        sealed = secrets.keyring.seal(private_pem.encode(), aad=b"kid-1")
        signing = SigningKey("kid-1", "ES256", {"kty": "EC"}, sealed, "active", 0.0)
        env.run(store.add_signing_key(signing, actor="test", at=0.0))
        env.sync()
        for value in (live.secret, rotated.secret, revoked.secret, live.secret + "x", admin.secret):
            env.get(X_API_Key=value)
            env.get(Authorization=f"ApiKey {value}")
            env.get(f"/books?api_key={value}")
        env.gw.advance(10)
        from stockade.identity.watch import shared_watcher

        env.run(shared_watcher(services).run_jobs())  # last-used batch written too
        assert env.run(store.get_api_key(rotated.record.id)).last_used_at is not None
        assert [d["status"] for d in env.decisions()].count(200) == 6
        issued = [live.secret, revoked.secret, rotated.secret, admin.secret, client_secret, private_pem.split("\n")[1]]
        env.gw.flush_log()
        files = [p for p in (tmp_path / "state").iterdir() if p.is_file()] + [env.log_path]
        data = b"".join(p.read_bytes() for p in files)
        assert len(files) >= 2 and len(data) > 10_000
        for secret in issued:
            assert secret.encode() not in data
            leaked = [piece for piece in pieces(secret) if piece.encode() in data]
            assert leaked == [], f"a piece of an issued secret was found in {[p.name for p in files]}"
        assert env.run(store.list_signing_keys())[0].private_key == sealed
        assert secrets.keyring.open(sealed, aad=b"kid-1").decode() == private_pem
