"""End-to-end checks that drive the whole gateway from outside (Claude Code CLI)."""
