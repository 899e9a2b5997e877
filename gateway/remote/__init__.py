"""Remote control: the WebSocket hub, sessions, the chat trigger, the bridge daemon.
Must not import web."""
