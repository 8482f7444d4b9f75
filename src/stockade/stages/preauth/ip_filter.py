"""`ip_filter`: allow or deny client addresses by CIDR before anything else runs."""

from __future__ import annotations

from typing import ClassVar

from pydantic import field_validator, model_validator

from stockade.pipeline.context import RequestContext
from stockade.pipeline.phase import Phase
from stockade.pipeline.stage import Stage, StageConfig, StageEnv
from stockade.pipeline.verdict import CONTINUE, Continue, Deny
from stockade.security.netaddr import NetSet, check_networks


class IpFilterConfig(StageConfig):
    allow: tuple[str, ...] = ()  # if set, only these networks may call
    deny: tuple[str, ...] = ()  # always refused, even if also allowed

    @field_validator("allow", "deny")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        check_networks(v)
        return v

    @model_validator(mode="after")
    def _something(self) -> IpFilterConfig:
        if not self.allow and not self.deny:
            raise ValueError("set `allow`, `deny` or both")
        return self


class IpFilter:
    """Denies (403 `ip.denied`) a client address in `deny`, or outside `allow` when `allow` is set.

    The address is the client's as established from trusted proxies only (see `trusted_proxies`).
    """

    id: ClassVar[str] = "ip_filter"
    phase: ClassVar[Phase] = Phase.PRE_AUTH
    Config: ClassVar[type[StageConfig]] = IpFilterConfig

    def __init__(self, config: IpFilterConfig, env: StageEnv) -> None:
        self._allow = NetSet(config.allow) if config.allow else None
        self._deny = NetSet(config.deny)

    def check(self, ctx: RequestContext) -> Continue | Deny:
        ip = ctx.client_ip
        if ip in self._deny:
            return Deny(403, "ip.denied", detail=f"{ip} is in the deny list")
        if self._allow is not None and ip not in self._allow:
            return Deny(403, "ip.denied", detail=f"{ip} is not in the allow list")
        return CONTINUE


_: type[Stage] = IpFilter
