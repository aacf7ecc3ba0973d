"""Tests of the client library, fencing helpers and CLI."""
