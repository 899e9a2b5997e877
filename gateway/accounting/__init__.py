"""Who may send a request and what it cost: key cache, limits, usage recorder.
Must not import api, relay or web."""
