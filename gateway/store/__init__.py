"""The database seam: one storage interface and its implementations.
Imports nothing else of gateway but config."""
