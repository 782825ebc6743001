// Echo tester: connect to /echo on the host that served this page, send lines,
// show every event in the log. User text is only ever set as textContent.
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const url = `${scheme}//${location.host}/echo`;
const $ = (id) => document.getElementById(id);
let socket = null;

$("url").textContent = url;

function log(kind, text) {
  const item = document.createElement("li");
  item.className = kind;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  const body = document.createElement("span");
  body.textContent = text;
  item.append(time, " ", body);
  $("log").prepend(item);
}

function setConnected(connected) {
  $("connect").disabled = connected;
  $("disconnect").disabled = !connected;
  $("message").disabled = !connected;
  $("send").disabled = !connected;
  $("state").textContent = connected ? "connected" : "disconnected";
  if (connected) $("message").focus();
}

$("connect").addEventListener("click", () => {
  $("state").textContent = "connecting…";
  socket = new WebSocket(url, "plain-text");
  socket.addEventListener("open", () => {
    setConnected(true);
    log("info", `connected (subprotocol: ${socket.protocol || "none"})`);
  });
  socket.addEventListener("message", (event) => log("received", `received: ${event.data}`));
  socket.addEventListener("error", () => log("error", "connection error"));
  socket.addEventListener("close", (event) => {
    setConnected(false);
    log("info", `closed (code ${event.code}${event.reason ? `: ${event.reason}` : ""})`);
  });
});

$("disconnect").addEventListener("click", () => socket && socket.close(1000, "bye"));

$("send-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value;
  if (!socket || socket.readyState !== WebSocket.OPEN || text === "") return;
  socket.send(text);
  log("sent", `sent: ${text}`);
  $("message").value = "";
});
