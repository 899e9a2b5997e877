"""The HTTP surface of the API: /v1/messages and its neighbours, middleware.
Owns request handling only; must not import web."""
