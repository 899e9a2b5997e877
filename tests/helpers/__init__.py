"""Shared test helpers: gateways and fakes as real servers, site clients."""
