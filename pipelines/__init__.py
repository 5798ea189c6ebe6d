"""The session pipeline (plain asyncio over typed events) and the offline pipelines. Never imports Ray."""

from .config import Settings
from .session import Pipeline, SessionState

__all__ = ["Settings", "Pipeline", "SessionState"]
