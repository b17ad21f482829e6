"""The call pipeline: typed frames, small pure stages (VAD, turn detector, sentence splitter, playout) and the
per-call session that wires them to STT, the agent, TTS and the media transport."""
