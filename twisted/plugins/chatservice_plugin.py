from twisted.application.service import ServiceMaker

chatservice = ServiceMaker(
    "chatservice", "chatservice.tap", "WebSocket echo and chat service.", "chatservice"
)
