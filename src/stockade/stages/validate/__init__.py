"""VALIDATE stages: the request is well-formed and within bounds."""
