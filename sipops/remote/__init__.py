"""Talking to hosts over SSH: transport (strict host keys), and later facts, plan and apply."""
