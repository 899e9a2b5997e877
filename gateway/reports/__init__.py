"""Read models for the dashboard, admin and public pages.
Must not import api, relay or web."""
