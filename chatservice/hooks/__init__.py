"""Application hooks: events out to the operator's application (webhooks), decisions in (proxies).

Specified in docs/hooks.md.
"""
