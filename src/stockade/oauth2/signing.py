"""The gateway's token signing keys: loaded from the store (private halves sealed with the KEK), rotated with an
overlap, published as a JWKS, and offered to the `jwt` stage as a local key source (no HTTP round trip).

Every worker follows the store's change feed. A `signing_key` change names a key without saying what changed, so
the keys are read again; from the moment the change arrives until a read begun after it has been applied, the key
it names verifies no token here (fail closed: it may have been deleted), and the token, revocation and JWKS
endpoints read first or answer 503 rather than sign with or publish a view the change has overtaken. A read that
fails (a database restart breaks pooled connections) is retried on the watcher's cadence with a back-off of at
most MAX_BACKOFF, and logged once when reads start failing and once when they work again; a change that arrives
during a read makes another read follow it. A truncated feed (changes were missed) withholds every key until a
read succeeds. Besides, each rotation check applies what it reads, and a key leaves the set at its `not_after`
without waiting for a read.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from stockade.errors import StorageError
from stockade.identity.watch import POLL_INTERVAL, RetryBackoff
from stockade.security.crypto import CryptoError
from stockade.security.jose import MAX_LEEWAY
from stockade.security.jwk import PrivateKey, parse_jwk, public_jwk
from stockade.security.jwks import KeySet
from stockade.storage.base import ConflictError
from stockade.storage.records import SigningKey

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.config.oauth2 import OAuth2Server
    from stockade.identity.watch import ChangeWatcher
    from stockade.pipeline.stage import Services
    from stockade.security.crypto import Keyring
    from stockade.storage.base import Store
    from stockade.storage.records import ChangeBatch

log = logging.getLogger("stockade.oauth2")

SHARED_KEY = "oauth2.signing_keys"
RELOAD_INTERVAL = 1.0  # an unknown kid of ours reloads from the store at most this often
ACTOR = "system:key-rotation"
MAINTAIN_INTERVAL = 60.0
# A failed read is retried after the watcher's interval, doubling, at most this: a key a change named verifies again
# at most this long after the store answers again.
MAX_BACKOFF = 5.0


def generate_key(alg: str) -> PrivateKey:
    if alg in ("ES256", "ES384"):
        return ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


class KeysNotCurrent(StorageError):
    """A signing-key change is known that no read has applied (the store failed): answered 503, as the outage is."""

    code = "oauth2.keys_not_current"


class SigningKeys:
    """The current view of the store's signing keys. `keys`/`current`/`refetch` make it a jwt KeySource."""

    def __init__(self, store: Store, keyring: Keyring, clock: Clock, watcher: ChangeWatcher | None = None) -> None:
        self.store = store
        self.watcher = watcher
        self.keyring = keyring
        self.clock = clock
        self.keys: KeySet | None = None
        # When the first published key reaches its `not_after` and leaves the set; the feed tells every other change.
        self.fresh_until = float("inf")
        self.records: list[SigningKey] = []  # not past `not_after`: what the JWKS publishes
        self._all: list[SigningKey] = []  # as last read
        self._signer: tuple[str, str, PrivateKey] | None = None
        self._unopened: str | None = None  # the active key this keyring could not open (logged once)
        self._last_reload = float("-inf")
        self.policy: OAuth2Server | None = None  # set by the token server; rotation runs only where one exists
        # Following the feed: each batch that names a key is a generation, and a read covers every generation
        # reached when it began (a change the feed has delivered is committed, so a read begun after it sees it).
        self._generation = 0
        self._unsure: dict[str, int] = {}  # kid -> generation of the newest change naming it that no read covers
        self._reload_due = 0  # generation of a truncated batch no read covers (0: none): every key is withheld
        self._reads = 0  # reads begun
        self._applied = 0  # the newest read applied: one begun earlier that ends later is older, and dropped
        self._catch_up_task: asyncio.Task[None] | None = None
        self._backoff = RetryBackoff(clock, watcher.interval if watcher is not None else POLL_INTERVAL, MAX_BACKOFF)
        self._last_error = ""
        self._closed = False

    async def maintain_if_serving(self) -> None:
        if self.policy is not None:
            await self.maintain(self.policy)

    # -- the jwt stage's view --------------------------------------------------------------------------------

    async def current(self, now: float) -> KeySet | None:
        if self.watcher is not None:
            self.watcher.ensure_running()
        if self.keys is None:
            await self.reload()
        elif now >= self.fresh_until:
            self._publish(now)  # a key reached its not_after: gone now, whether or not its deletion was read
        return self.keys

    async def refetch(self, now: float) -> bool:
        """A kid not in the set: a key not read yet, or one a change withholds. True if the set changed. Raises
        StorageError while a change cannot be read: the token may be good, so the stage answers 503, not 401."""
        before = self.keys
        if self._pending():
            if not await self._caught_up(force=False):  # during a back-off: no read per token
                raise KeysNotCurrent(self._behind())
            return self.keys is not before
        if now - self._last_reload < RELOAD_INTERVAL:
            return False
        await self.reload()
        return self.keys is not before

    # -- the endpoints' view ----------------------------------------------------------------------------------

    async def up_to_date(self, *, force: bool = False) -> None:
        """Apply every change the feed has named, before signing with or publishing this view: never sign with a
        key a change may have retired, nor publish a set it may have changed. `force` reads even during a failure's
        back-off (a caller that has just used the store). Raises KeysNotCurrent (a StorageError: 503)."""
        if not await self._caught_up(force=force):
            raise KeysNotCurrent(self._behind())

    # -- following the feed ------------------------------------------------------------------------------------

    def on_changes(self, batch: ChangeBatch) -> None:
        named = [c.ref for c in batch.changes if c.kind == "signing_key"]
        if not named and not batch.truncated:
            return
        self._generation += 1
        for kid in named:
            self._unsure[kid] = self._generation
        if batch.truncated:
            self._reload_due = self._generation
        if self.keys is not None:
            self._publish(self.clock.time())  # the named keys are withheld from now on
        self._backoff.now()  # the feed just answered: try at once
        self._start_catch_up()

    async def retry(self) -> None:
        """The watcher's job, on its cadence: start a catch-up that a failure left pending once its back-off is over."""
        if self._pending() and self._backoff.due():
            self._start_catch_up()

    # -- catching up -------------------------------------------------------------------------------------------

    def _pending(self) -> bool:
        return bool(self._unsure) or self._reload_due > 0

    def _under_way(self) -> asyncio.Task[None] | None:
        task = self._catch_up_task
        return task if task is not None and not task.done() else None

    def _start_catch_up(self) -> None:
        if not self._closed and self._under_way() is None:
            self._catch_up_task = asyncio.get_running_loop().create_task(self._catch_up())

    async def _caught_up(self, *, force: bool) -> bool:
        """Join the catch-up under way, or start one unless a failure's back-off forbids it (`force`: a caller that
        has just used the store tries anyway). True if no change is left unapplied."""
        if not self._pending():
            return True
        if self._under_way() is None and (force or self._backoff.due()):
            self._start_catch_up()
        if (task := self._under_way()) is not None:
            await asyncio.shield(task)  # a caller that gives up does not cancel everyone's read
        return not self._pending()

    async def _catch_up(self) -> None:
        """Read until a read covers every change the feed named. Never raises: a failure leaves the named keys
        withheld and sets when to try again."""
        try:
            while self._pending():
                await self.reload()
        except Exception as exc:  # the store is down, or answered something unreadable: stay closed, try later
            self._last_error = f"{type(exc).__name__}: {exc}"
            if self._backoff.failed():
                log.error(
                    "cannot read the signing keys after a change (%s): until a read succeeds, keys %s verify no token "
                    "and this worker issues none",
                    self._last_error,
                    "(all)" if self._reload_due else ", ".join(sorted(self._unsure)),
                    extra={"store": self.store.url},
                )

    def _behind(self) -> str:
        if self._backoff.failures:
            return f"signing-key changes not read yet: the store failed ({self._last_error})"
        return "signing-key changes not read yet"

    async def aclose(self) -> None:
        """Stop catching up (Services.close())."""
        self._closed = True
        task, self._catch_up_task = self._catch_up_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- loading -----------------------------------------------------------------------------------------------

    async def reload(self) -> list[SigningKey]:
        """Read every key from the store; publish those not past `not_after`; pick the active signer; return what
        was read. A read begun before another that was applied first is not applied; an applied one covers every
        change delivered before it began."""
        covers, self._reads = self._generation, self._reads + 1
        read = self._reads
        self._last_reload = self.clock.time()
        records = await self.store.list_signing_keys()
        if self._backoff.succeeded():
            log.warning("signing keys read again", extra={"store": self.store.url})
        if read < self._applied:
            return records
        self._applied = read
        self._unsure = {kid: gen for kid, gen in self._unsure.items() if gen > covers}
        if self._reload_due <= covers:
            self._reload_due = 0
        self._all = records
        self._publish(self.clock.time())
        self._choose_signer()
        return records

    def _choose_signer(self) -> None:
        active = next((k for k in reversed(self.records) if k.state == "active"), None)
        if active is None:
            self._signer = None
            return
        if self._signer is not None and self._signer[0] == active.kid:
            return
        try:
            pem = self.keyring.open(active.private_key, aad=active.kid.encode())
        except CryptoError as exc:
            # No signer: the token endpoint answers 503 (not a 500 per request), and verification goes on with the
            # public keys. Start-up refuses this state (security/envelopes.py); it arises here only from a key
            # another node sealed under a KEK this one lacks, or a store unreachable at start-up. Every read tries
            # again (each rotation check, and each token request meanwhile): the log says it once per key.
            self._signer = None
            if self._unopened != active.kid:
                self._unopened = active.kid
                log.error(
                    "signing key %s cannot be opened, no tokens can be issued: %s; load that KEK again after the "
                    "active one and run `stockade secrets reseal`",
                    active.kid,
                    exc,
                )
            return
        self._unopened = None
        key = serialization.load_pem_private_key(pem, password=None)
        self._signer = (active.kid, active.alg, key)  # type: ignore[assignment]

    def _publish(self, now: float) -> None:
        """Publish the keys read that are not past `not_after`; offer the `jwt` stage those of them that no change
        not yet covered by a read names."""
        self.records = [k for k in self._all if k.not_after is None or k.not_after > now]
        self.fresh_until = min((k.not_after for k in self.records if k.not_after is not None), default=float("inf"))
        usable = [] if self._reload_due else [k for k in self.records if k.kid not in self._unsure]
        digest = hashlib.sha256(",".join(f"{k.kid}:{k.state}" for k in usable).encode()).hexdigest()
        if self.keys is None or self.keys.digest != digest:  # same keys: same object, so cached tokens stay valid
            self.keys = KeySet([parse_jwk(dict(k.public_jwk)) for k in usable], digest)

    def signer(self) -> tuple[str, str, PrivateKey] | None:
        """(kid, alg, private key) of the active key, or None before the first key exists."""
        return self._signer

    def jwks(self) -> dict[str, Any]:
        """The published set: the next key (before it signs), the active one, and retired keys until their
        tokens have expired."""
        if (now := self.clock.time()) >= self.fresh_until:
            self._publish(now)
        return {"keys": [dict(k.public_jwk) for k in self.records]}

    # -- rotation ----------------------------------------------------------------------------------------------

    async def maintain(self, cfg: OAuth2Server) -> None:
        """Create the first key; publish the next one `publish_ahead` before the active key's life ends;
        activate it once it has been published that long; drop retired keys after their tokens expired."""
        now = self.clock.time()
        # Applied, not only consulted: every serving worker's view is then at most a minute behind the store, even
        # one whose reads after a change kept failing.
        records = await self.reload()
        active = [k for k in records if k.state == "active"]
        upcoming = [k for k in records if k.state == "next"]
        changed = False
        if not active:
            changed = await self._add(cfg.algorithm, "active", now)
        else:
            current = active[-1]
            age = now - (current.activated_at or current.created_at)
            if not upcoming and age >= cfg.rotate_every - cfg.publish_ahead:
                changed = await self._add(cfg.algorithm, "next", now)
            elif upcoming and age >= cfg.rotate_every and now - upcoming[0].created_at >= cfg.publish_ahead:
                retire_after = now + cfg.token_ttl + MAX_LEEWAY  # tokens it signed still verify until they expire
                await self.store.activate_signing_key(
                    upcoming[0].kid, retire_not_after=retire_after, actor=ACTOR, at=now
                )
                log.info("signing key %s activated; %s retired until %.0f", upcoming[0].kid, current.kid, retire_after)
                changed = True
        for k in records:
            if k.state == "retired" and k.not_after is not None and k.not_after <= now:
                await self.store.delete_signing_key(k.kid, actor=ACTOR, at=now)
                changed = True
        if changed:
            await self.reload()

    async def _add(self, alg: str, state: str, now: float) -> bool:
        """Add a key; True if this process added it, False if another worker or node got there first."""
        from stockade.security.keys import new_id

        key = generate_key(alg)
        kid = new_id("sig")
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        record = SigningKey(
            kid=kid,
            alg=alg,
            public_jwk=public_jwk(key.public_key(), kid, alg),
            private_key=self.keyring.seal(pem, aad=kid.encode()),
            state=state,  # type: ignore[arg-type]
            created_at=now,
            activated_at=now if state == "active" else None,
        )
        try:
            await self.store.add_signing_key(record, actor=ACTOR, at=now)
        except ConflictError:  # two workers' first token at once: the store keeps one active key, use theirs
            log.info("another process added the %s signing key first", state)
            await self.reload()
            return False
        log.info("signing key %s (%s) added as %s", kid, alg, state)
        return True

    def serving(self) -> None:
        """The token endpoint is in use: rotation runs on the change-watcher task, so make sure it runs (a gateway
        that only issues tokens has no jwt stage to start it)."""
        if self.watcher is not None:
            self.watcher.ensure_running()


def shared_signing_keys(services: Services) -> SigningKeys:
    """The process's signing keys over the shared store, following the change feed."""
    from stockade.identity.watch import shared_watcher
    from stockade.security.secrets import shared_secrets
    from stockade.storage import shared_store

    def build() -> SigningKeys:
        watcher = shared_watcher(services)
        keys = SigningKeys(shared_store(services), shared_secrets(services).keyring, services.clock, watcher)
        watcher.subscribe(keys.on_changes)
        watcher.every(watcher.interval, keys.retry)
        watcher.every(MAINTAIN_INTERVAL, keys.maintain_if_serving)
        return keys

    return services.over_store(SHARED_KEY, SigningKeys, build)


def gateway_key_source(services: Services, issuer: str) -> SigningKeys:
    """The `jwt` stage's key source for an issuer with `gateway: true`: this gateway's own signing keys."""
    cfg = services.config.oauth2_server if services.config is not None else None
    if cfg is None or cfg.issuer != issuer:
        raise ValueError(f"issuer {issuer!r} has `gateway: true` but no `oauth2_server` with that issuer exists")
    return shared_signing_keys(services)
