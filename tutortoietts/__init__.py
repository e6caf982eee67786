"""tutortoietts: manuscripts to audiobooks with the Tortoise TTS models, fast."""

__version__ = "0.1.0"
