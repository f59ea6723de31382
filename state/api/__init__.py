"""The REST API over the read model: ``create_app(load_settings())``."""

from state.api.app import create_app
from state.api.settings import ApiSettings, load_settings

__all__ = ["ApiSettings", "create_app", "load_settings"]
