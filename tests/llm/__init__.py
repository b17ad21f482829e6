"""Tests of the LLM backends."""
