"""One module per CLI command; each exposes ``register(app, user_errors)``."""
