"""Authorization stages: scopes and roles, ownership, function-level rules."""
