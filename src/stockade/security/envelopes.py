"""What the store keeps sealed under KEKs: which KEK ids those envelopes need, and re-sealing them under the active one.

Today one kind of record holds envelopes: token signing keys (their private halves, `aad` = kid). API keys, admin
tokens and client secrets are keyed hashes, not envelopes: a KEK rotation does not touch them. A new kind of sealed
field joins `ENVELOPE_KINDS`, so that both the start-up check (`secrets.verify_store_secrets`) and `stockade secrets
reseal` cover it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from stockade.security.crypto import CryptoError, kek_id
from stockade.security.secrets import KEK_ENV, SecretsError

if TYPE_CHECKING:
    from stockade.clock import Clock
    from stockade.security.crypto import Keyring
    from stockade.storage.base import Store

MAX_PASSES = 5  # a reseal that lost a race reads the record again; rotation cannot keep winning for long
SHOWN = 5  # records named per KEK id in an error


@dataclass(frozen=True, slots=True)
class Sealed:
    """One envelope in the store: the record kind and id it belongs to, the envelope and its `aad`."""

    kind: str
    ref: str
    envelope: bytes
    aad: bytes

    @property
    def kek(self) -> str | None:
        """The KEK id it is sealed under; None if it is not an envelope at all (corrupt)."""
        try:
            return kek_id(self.envelope)
        except CryptoError:
            return None


class EnvelopeKind(Protocol):
    kind: ClassVar[str]

    async def live(self, store: Store, now: float) -> list[Sealed]:
        """Every envelope of this kind a gateway may still open or publish."""
        ...

    async def replace(self, store: Store, item: Sealed, envelope: bytes, *, actor: str, at: float) -> bool:
        """Store `envelope` in place of `item`'s if the record still holds `item.envelope`."""
        ...

    async def forget(self, store: Store, item: Sealed, *, keep_until: float, actor: str, at: float) -> None:
        """Make `item` a record no gateway opens any more (its KEK is lost); what it vouched for may hold until
        `keep_until`."""
        ...


class SigningKeyEnvelopes:
    """Token signing keys' private halves. Only a key that may sign (active or next) is live: a retired key's
    private half is never opened again, and a key past `not_after` is about to be deleted by rotation."""

    kind: ClassVar[str] = "signing_key"

    async def live(self, store: Store, now: float) -> list[Sealed]:
        return [
            Sealed(self.kind, k.kid, k.private_key, k.kid.encode())
            for k in await store.list_signing_keys()
            if k.state in ("active", "next") and (k.not_after is None or k.not_after > now)
        ]

    async def replace(self, store: Store, item: Sealed, envelope: bytes, *, actor: str, at: float) -> bool:
        return await store.reseal_signing_key(item.ref, envelope, expected=item.envelope, actor=actor, at=at)

    async def forget(self, store: Store, item: Sealed, *, keep_until: float, actor: str, at: float) -> None:
        # Retired: it signs nothing more, tokens it signed verify until they expire (the public half is not
        # sealed), and the next rotation check makes a new active key if it was the active one.
        await store.retire_signing_key(item.ref, not_after=keep_until, actor=actor, at=at)


ENVELOPE_KINDS: tuple[EnvelopeKind, ...] = (SigningKeyEnvelopes(),)


async def live_envelopes(store: Store, now: float) -> list[Sealed]:
    return [item for kind in ENVELOPE_KINDS for item in await kind.live(store, now)]


def _names(items: list[Sealed]) -> str:
    shown = ", ".join(f"{i.kind} {i.ref}" for i in items[:SHOWN])
    return shown + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def check_loaded(items: list[Sealed], keyring: Keyring) -> None:
    """Raise SecretsError, naming each missing KEK id, its records and the fix, if any envelope in `items` is
    sealed under a KEK id `keyring` does not hold (or is no envelope at all)."""
    missing: dict[str | None, list[Sealed]] = {}
    for item in items:
        if item.kek not in keyring.ids:
            missing.setdefault(item.kek, []).append(item)
    if not missing:
        return
    problems = [
        f"{_names(found)} {'is' if len(found) == 1 else 'are'} sealed under KEK {kek!r}, which is not loaded"
        if kek is not None
        else f"{_names(found)}: not a sealed envelope (corrupt)"
        for kek, found in missing.items()
    ]
    ids = [kek for kek in missing if kek is not None]
    fix = (
        f"load {', '.join(map(repr, ids))} again after the active KEK ({KEK_ENV} or secrets.kek_file: "
        f"'{keyring.active}:...,{ids[0]}:...'), run `stockade secrets reseal`, then drop "
        f"{'it' if len(ids) == 1 else 'them'}"
        if ids
        else "restore the store from a backup"
    )
    raise SecretsError(f"{'; '.join(problems)}: {fix}")


@dataclass
class ResealReport:
    active: str  # the KEK everything is sealed under now
    resealed: Counter[str] = field(default_factory=Counter)  # per kind: envelopes this run re-sealed
    current: Counter[str] = field(default_factory=Counter)  # per kind: already under the active KEK
    in_use: Counter[str] = field(default_factory=Counter)  # per KEK id: live envelopes sealed under it afterwards


async def reseal(store: Store, keyring: Keyring, *, actor: str, clock: Clock) -> ResealReport:
    """Re-seal every live envelope under the active KEK (each an admin change). Idempotent. Refuses (SecretsError)
    before writing anything if an envelope is sealed under a KEK id that is not loaded; a record that changed
    under it (rotation, another reseal) is read again."""
    report = ResealReport(keyring.active)
    kinds = {kind.kind: kind for kind in ENVELOPE_KINDS}
    items = await live_envelopes(store, clock.time())
    check_loaded(items, keyring)
    report.current.update(i.kind for i in items if i.kek == keyring.active)
    for _ in range(MAX_PASSES):
        pending = [i for i in items if i.kek != keyring.active]
        if not pending:
            break
        for item in pending:
            try:
                envelope = keyring.reseal(item.envelope, aad=item.aad)
            except CryptoError as exc:
                raise CryptoError(f"{item.kind} {item.ref}: {exc}") from None
            if await kinds[item.kind].replace(store, item, envelope, actor=actor, at=clock.time()):
                report.resealed[item.kind] += 1
        items = await live_envelopes(store, clock.time())
        check_loaded(items, keyring)  # a node with an older keyring may have sealed a new one meanwhile
    report.in_use.update(i.kek or "?" for i in items)
    return report


async def forget_kek(
    store: Store, keyring: Keyring, kek: str, *, keep_until: float, actor: str, clock: Clock
) -> Counter[str]:
    """Give up every live envelope sealed under `kek`, a KEK that is lost for good, each as its kind allows (a
    signing key is retired); returns the count per kind. Refuses (SecretsError) a KEK that is loaded: that one is
    re-sealed, not forgotten."""
    if kek in keyring.ids:
        raise SecretsError(f"KEK {kek!r} is loaded: run `stockade secrets reseal`, then drop it")
    kinds = {kind.kind: kind for kind in ENVELOPE_KINDS}
    forgotten: Counter[str] = Counter()
    for item in await live_envelopes(store, clock.time()):
        if item.kek == kek:
            await kinds[item.kind].forget(store, item, keep_until=keep_until, actor=actor, at=clock.time())
            forgotten[item.kind] += 1
    return forgotten
