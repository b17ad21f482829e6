"""Text-to-speech: the :class:`~voicebot.tts.base.TextToSpeech` interface and its Piper implementation."""
