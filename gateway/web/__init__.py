"""HTTP: routes, request/response models, problem+json errors, OpenAPI."""

from gateway.web.app import create_app

__all__ = ["create_app"]
