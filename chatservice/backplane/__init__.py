"""Where messages are numbered, kept and passed on, and what instances tell each other."""
