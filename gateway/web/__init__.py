"""HTTP: routes, request/response models, problem+json errors, OpenAPI. The app is
``gateway.web.app.create_app``; nothing is imported here, so the client (``jobgate.client``),
which needs only :mod:`gateway.web.models`, does not load the server."""
