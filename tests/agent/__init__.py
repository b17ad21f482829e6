"""Tests of the agent core, store and CLI."""
