"""Speech-to-text: the interface and its faster-whisper implementation."""
