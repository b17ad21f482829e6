"""Test doubles for services that cannot run on the test machine, speaking their real wire formats."""
