"""The chat: rooms, names, sign-in, moderation and fan-out, without sockets.

`hub.Hub` is the facade the WebSocket protocol and the HTTP API call; each
concern behind it is a unit of its own, tested without a reactor.  The pure
modules (`messages`, `presence`, `policy`, `identity`, `moderation`) do no
I/O at all.  What reaches other instances goes through the backplane's roles
(`chatservice.backplane.roles`).
"""
