"""Which upstream serves a request and how to survive it: routing, failover, breakers, probes.
Must not import api, web or the SaaS packages."""
