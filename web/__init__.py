"""HTMX page handlers and site plumbing: parse the form, call a service in gateway/, render.
Must not import gateway.api, gateway.relay or gateway.app (handlers read typed app keys)."""
