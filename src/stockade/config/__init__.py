"""Declarative configuration: strict models, the loader, environment overrides and JSON Schema export."""

from stockade.config.loader import load_config, load_config_text
from stockade.config.models import GatewayConfig

__all__ = ["GatewayConfig", "load_config", "load_config_text"]
