"""Users, keys, sign-up, e-mail codes, login throttles, Google sign-in, mail.
Must not import api, relay or web."""
