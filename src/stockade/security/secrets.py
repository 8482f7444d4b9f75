"""Loading the server's secret material: the API-key pepper and the key-encryption keys (KEKs).

Precedence: environment (`STOCKADE_PEPPER`, `STOCKADE_KEK`), then the `secrets:` files in the config, then
`.stockade/pepper` and `.stockade/kek` next to the config, generated on first use with mode 0600 so the
embedded default works with zero set-up (and said in the log: losing the pepper invalidates every key).

Formats: the pepper is base64 of at least 32 bytes. KEKs are `id:base64-of-32-bytes` entries separated by
newlines or commas; the first seals, every one opens (so KEKs rotate without downtime).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stockade.security.crypto import Keyring

if TYPE_CHECKING:
    from stockade.config.models import Secrets as SecretsConfig
    from stockade.pipeline.stage import Services
    from stockade.storage.base import SecretCheckStore

log = logging.getLogger("stockade.secrets")

PEPPER_ENV = "STOCKADE_PEPPER"
KEK_ENV = "STOCKADE_KEK"
DEFAULT_DIR = ".stockade"
MIN_PEPPER_BYTES = 32
SHARED_KEY = "secrets"


class SecretsError(ValueError):
    """Secret material is missing, malformed or unsafe. The message never contains the material."""


@dataclass(frozen=True)
class Secrets:
    pepper: bytes
    keyring: Keyring

    def __repr__(self) -> str:
        return f"Secrets(keyring={self.keyring.ids})"


def _b64(text: str, what: str) -> bytes:
    text = text.strip()
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if "-" in text or "_" in text else None)
    except (binascii.Error, ValueError):
        raise SecretsError(f"{what} is not valid base64") from None


def parse_pepper(text: str, where: str) -> bytes:
    pepper = _b64(text, f"the pepper from {where}")
    if len(pepper) < MIN_PEPPER_BYTES:
        raise SecretsError(f"the pepper from {where} is {len(pepper)} bytes; at least {MIN_PEPPER_BYTES} required")
    return pepper


def parse_keks(text: str, where: str) -> Keyring:
    keys: dict[str, bytes] = {}
    for raw in text.replace(",", "\n").splitlines():
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        kid, sep, material = entry.partition(":")
        if not sep:
            raise SecretsError(f"KEK entries in {where} look like id:base64key")
        kid = kid.strip()  # compared as stored: "k1 " is k1, and must not silently replace it
        if kid in keys:
            raise SecretsError(f"KEK id {kid!r} appears twice in {where}")
        keys[kid] = _b64(material, f"KEK {kid!r} from {where}")
    if not keys:
        raise SecretsError(f"no KEK found in {where}")
    try:
        return Keyring(keys, active=next(iter(keys)))
    except ValueError as exc:
        raise SecretsError(f"{where}: {exc}") from None


def _read(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretsError(f"cannot read {path}: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    if mode & 0o077:
        log.warning("secret file %s is readable by group or others (mode %o); chmod 600 it", path, mode & 0o777)
    return text


def _create_exclusive(path: Path, text: str) -> bool:
    """Write `text` to `path` only if it does not exist (atomic: concurrent workers agree on one value)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
        try:
            os.link(tmp, path)  # fails if another process published first
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def new_material(kind: str) -> str:
    """Fresh file contents for a `pepper` or a `kek` file."""
    if kind == "pepper":
        return base64.b64encode(secrets.token_bytes(MIN_PEPPER_BYTES)).decode() + "\n"
    return f"k1:{base64.b64encode(Keyring.new_key()).decode()}\n"


def ensure_file(path: Path, kind: str) -> bool:
    """Create a `pepper` or `kek` file at `path` (mode 0600, directories 0700) unless it exists; True if this call
    made it. For tools that name the files explicitly (`secrets.pepper_file`, which must exist)."""
    return not path.exists() and _create_exclusive(path, new_material(kind))


def _material(env_value: str | None, file: str | None, default: str, base_dir: Path, generate: bool, make: str) -> str:
    if env_value:
        return env_value
    path = Path(file) if file else Path(DEFAULT_DIR) / default
    path = path if path.is_absolute() else base_dir / path
    if not path.exists():
        if file or not generate:
            raise SecretsError(f"{path} does not exist")
        try:
            made = _create_exclusive(path, make)
        except OSError as exc:  # a read-only config directory: say what to give instead
            raise SecretsError(
                f"cannot generate {path}: {exc.strerror or type(exc).__name__}; give it with "
                f"{PEPPER_ENV if default == 'pepper' else KEK_ENV} or secrets.{default}_file"
            ) from None
        if made:
            log.warning(
                "generated %s at %s (mode 0600); back it up and keep it secret: losing it invalidates %s",
                default,
                path,
                "every API key, admin token and client secret" if default == "pepper" else "encrypted fields",
            )
    return _read(path)


def load_secrets(config: SecretsConfig, base_dir: Path, env: Mapping[str, str] | None = None) -> Secrets:
    """Resolve the pepper and KEKs (generating the default files if allowed). Raises SecretsError."""
    env = os.environ if env is None else env
    return Secrets(_load_pepper(config, base_dir, env, config.generate), _load_keks(config, base_dir, env))


def _load_pepper(config: SecretsConfig, base_dir: Path, env: Mapping[str, str], generate: bool) -> bytes:
    text = _material(env.get(PEPPER_ENV), config.pepper_file, "pepper", base_dir, generate, new_material("pepper"))
    return parse_pepper(text, PEPPER_ENV if env.get(PEPPER_ENV) else "the pepper file")


def _load_keks(config: SecretsConfig, base_dir: Path, env: Mapping[str, str]) -> Keyring:
    text = _material(env.get(KEK_ENV), config.kek_file, "kek", base_dir, config.generate, new_material("kek"))
    return parse_keks(text, KEK_ENV if env.get(KEK_ENV) else "the KEK file")


def load_pepper(config: SecretsConfig, base_dir: Path, env: Mapping[str, str] | None = None) -> bytes:
    """The pepper alone, never generated: for tools that must find what a gateway already keyed with it (a new
    pepper would match nothing). Raises SecretsError."""
    return _load_pepper(config, base_dir, os.environ if env is None else env, False)


def pepper_problem(config: SecretsConfig, base_dir: Path, env: Mapping[str, str] | None = None) -> str | None:
    """Why loading the pepper would fail, as far as can be told without reading or writing a secret file (for
    `config check`, which must not touch them): a named or required file that does not exist, or a default one
    that cannot be generated in a directory that is not writable. None: it may well load."""
    env = os.environ if env is None else env
    if env.get(PEPPER_ENV):
        return None
    path = Path(config.pepper_file) if config.pepper_file else Path(DEFAULT_DIR) / "pepper"
    path = path if path.is_absolute() else base_dir / path
    if path.exists():
        return None
    if config.pepper_file or not config.generate:
        why = "secrets.pepper_file names it" if config.pepper_file else "secrets.generate is false"
        return f"{path} does not exist ({why}); set {PEPPER_ENV} or create the file"
    existing = next((p for p in (path.parent, *path.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK):
        return f"{path} would be generated, but {existing or path.parent} is not writable; set {PEPPER_ENV}"
    return None


PEPPER_KEY = "secrets.pepper"  # Services.shared: the pepper, when it was loaded alone
PEPPER_USERS = "secrets.pepper_users"  # Services.shared, dry run: what would need the pepper at start


def shared_pepper(services: Services, user: str) -> bytes:
    """The process's pepper without its KEKs: what keys login usernames needs no KEK, so a gateway whose only use
    of secrets is a brute_force login route neither reads nor generates one. The same pepper `shared_secrets`
    hands out later. `user` names who needs it (`config check` reports it)."""
    found = services.shared.get(SHARED_KEY)
    if isinstance(found, Secrets):
        return found.pepper
    pepper = services.shared.get(PEPPER_KEY)
    if isinstance(pepper, bytes):
        return pepper
    if services.config is None:
        raise SecretsError("no configuration: cannot locate the pepper")
    if services.dry_run:
        services.shared.setdefault(PEPPER_USERS, []).append(user)
        pepper = secrets.token_bytes(MIN_PEPPER_BYTES)
    else:
        config = services.config.secrets
        pepper = _load_pepper(config, services.base_dir or Path.cwd(), os.environ, config.generate)
    services.shared[PEPPER_KEY] = pepper
    return pepper


def shared_secrets(services: Services) -> Secrets:
    """The process's secrets (`services.shared["secrets"]`), loaded on first use from `services.config.secrets`."""
    found = services.shared.get(SHARED_KEY)
    if isinstance(found, Secrets):
        return found
    if services.config is None:
        raise SecretsError("no configuration: cannot locate the secrets")
    pepper = shared_pepper(services, "the store's keys")  # one pepper per process, whoever loaded it first
    if services.dry_run:  # `config check`: throwaway material, no files generated or read
        loaded = Secrets(pepper, Keyring({"check": secrets.token_bytes(32)}, "check"))
    else:
        loaded = Secrets(pepper, _load_keks(services.config.secrets, services.base_dir or Path.cwd(), os.environ))
    services.shared[SHARED_KEY] = loaded
    return loaded


async def verify_with_store(secrets: Secrets, store: SecretCheckStore, at: float) -> None:
    """Refuse material other than the store's: the first process to use a store records what its pepper and KEKs
    are (checks that reveal nothing of them), and every later one must match. Without this, a node or CLI that
    generated its own pepper wrote key hashes no other node could match, and a KEK of its own sealed signing keys
    nobody else could open. Raises SecretsError naming what differs; StorageError if the store is unreachable."""
    from stockade.security.keys import pepper_check
    from stockade.storage.base import ConflictError

    checks = {"pepper": pepper_check(secrets.pepper)} | {f"kek:{k}": v for k, v in secrets.keyring.checks().items()}
    try:
        differ = await store.record_secret_checks(checks, at=at)
    except ConflictError:  # another process recorded them at the same moment: compare with what it recorded
        differ = await store.record_secret_checks(checks, at=at)
    if not differ:
        return
    what = []
    if "pepper" in differ:
        what.append("the pepper (API keys, admin tokens and client secrets hashed here would match nowhere else)")
    keks = [name.removeprefix("kek:") for name in differ if name.startswith("kek:")]
    if keks:
        what.append(f"KEK {', '.join(map(repr, keks))} (what it seals could not be opened elsewhere)")
    raise SecretsError(
        f"{' and '.join(what)} differ from those store {store.url} was first used with: give every node and the "
        f"CLI the same material (secrets.pepper_file / kek_file, or {PEPPER_ENV} / {KEK_ENV})"
    )


async def verify_store_secrets(services: Services) -> None:
    """At start-up, if the runtime uses the store: `verify_with_store`, and every live envelope in the store must
    be sealed under a loaded KEK, as config errors. Without the second check, dropping an old KEK before its
    envelopes were re-sealed started cleanly and reported ready while no token could be signed. A store that cannot
    be reached now is not a reason to refuse to start (requests that need it fail closed on their own)."""
    from stockade.errors import ConfigError, StorageError
    from stockade.security.envelopes import check_loaded, live_envelopes
    from stockade.storage import SHARED_KEY as STORE_KEY
    from stockade.storage import shared_store

    if services.dry_run or STORE_KEY not in services.shared:
        return
    try:  # the secrets may be loaded here first (a supervisor's): a missing file is a config error, not a trace
        material, store, now = shared_secrets(services), shared_store(services), services.clock.time()
    except SecretsError as exc:
        raise ConfigError([f"secrets: {exc}"]) from None
    except StorageError as exc:  # made, not reached: the URL itself is unusable
        raise ConfigError([f"storage: {exc}"]) from None
    try:
        await verify_with_store(material, store, now)
        check_loaded(await live_envelopes(store, now), material.keyring)
    except SecretsError as exc:
        raise ConfigError([f"secrets: {exc}"]) from None
    except StorageError as exc:
        log.warning("secrets not checked against the store, which is unreachable: %s", exc)
