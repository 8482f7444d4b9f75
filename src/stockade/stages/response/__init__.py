"""Stages whose work is on the response (response hooks)."""
