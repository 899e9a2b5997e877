"""One object per upstream protocol (OpenAI-compatible, Anthropic, demo) that sends a Call.
Must not import api, relay, accounting, the SaaS packages or web."""
