"""The REST API over the read model: ``create_app(load_settings())``."""

from api.app import create_app
from api.settings import ApiSettings, load_settings

__all__ = ["ApiSettings", "create_app", "load_settings"]
