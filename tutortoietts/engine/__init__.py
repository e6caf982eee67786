"""The speech engine: Tortoise's networks and the pipeline that runs them (`Tortoise`, `VoiceLatents`, `Clip`)."""

from __future__ import annotations

__all__ = ["Tortoise", "VoiceLatents", "Clip"]


def __getattr__(name: str):
    # Lazy, so importing a light module (configs, tokenizer) does not load the whole pipeline.
    if name in __all__:
        from tutortoietts.engine import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'tutortoietts.engine' has no attribute {name!r}")
