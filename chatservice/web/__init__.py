"""What faces the network: the Site, the HTTP channel and API, the Autobahn protocols.

Protocols stay thin: they parse a frame and hand it to the chat's hub
(`chatservice.chat.hub`).  Frames built once for many connections live in
`frames`; every Autobahn and Twisted internal we rely on is named in
`chatservice.internals`.
"""
