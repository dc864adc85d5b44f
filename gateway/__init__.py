"""transcribe-gateway: a self-hosted asynchronous transcription daemon."""

__version__ = "0.1.0"
API_BASE = "/serve/api/v2"
