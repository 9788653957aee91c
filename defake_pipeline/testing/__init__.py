"""Test helpers that are real parts: a local chat-completions server with fault injection."""
