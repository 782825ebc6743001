"""``--workers N``: a master that listens and supervises, and the workers it starts.

The master hands its listening sockets to the workers (`listening`), and they
share numbers (connections, limits, metrics) through a memory-mapped
scoreboard (`scoreboard`).  Workers share rooms through Redis, as separate
instances do.
"""
