"""The chat channel: sessions with an agent over the admin API, replies streamed as Server-Sent Events."""
