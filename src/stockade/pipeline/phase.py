"""The fixed order of pipeline phases."""

from enum import IntEnum


class Phase(IntEnum):
    """Stages run phase by phase in this order; there are no numeric priorities."""

    PRE_AUTH = 0  # IP allow/deny, active blocks, per-IP limits, brute-force lockout
    AUTHENTICATE = 1  # first authenticator that recognises the credential wins
    AUTHORIZE = 2  # scopes/roles, ownership (object-level), function-level rules
    VALIDATE = 3  # OpenAPI request validation, size/depth limits, content types
    RATE_LIMIT = 4  # per principal / key / route / claim; quotas; concurrency
    DETECT = 5  # signatures and behaviour: produce findings, never respond
    ACT = 6  # turn findings into deny / block / alert
