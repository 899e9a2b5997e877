"""HTMX page handlers: parse the form, call a service in gateway/, render a template."""
