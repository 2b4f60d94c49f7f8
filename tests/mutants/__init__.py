"""Deliberately broken designs, written through the public policy hooks, that
``exitsim check`` must catch. Each docstring names the invariant that must fire."""
