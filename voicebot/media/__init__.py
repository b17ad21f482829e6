"""Media between Asterisk and Eva: RTP codec (pure), jitter buffer, port allocation and the transports."""
