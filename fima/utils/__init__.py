"""Utilities shared by every part of fima: distributed helpers, events, logging, seeding."""
