"""A module that forgets ``get_timestamp_embeddings``: not a HEAR module."""
from __future__ import annotations

from tiny_hear import load_model, get_scene_embeddings  # noqa: F401
