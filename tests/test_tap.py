"""``twistd chatservice``: options, errors, and the installed plugin as users run it."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from net import http_get, start_twistd
from websockets.sync.client import connect

from chatservice.config import BUNDLED_STATIC
from chatservice.tap import Options


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults() -> None:
    config = parse().config
    assert config.ports == ("tcp:8080",)
    assert config.static_dir == BUNDLED_STATIC
    assert (config.static_dir / "index.html").is_file()
    assert config.log_level == "info"


def test_ports_repeat_and_bare_numbers_mean_tcp(tmp_path: Path) -> None:
    config = parse(
        "--port", "9000", "-p", "tcp:9001:interface=127.0.0.1", "--port", f"unix:{tmp_path}/s.sock"
    ).config
    assert config.ports == ("tcp:9000", "tcp:9001:interface=127.0.0.1", f"unix:{tmp_path}/s.sock")


def test_chat_options_reach_the_config(tmp_path: Path) -> None:
    config = parse(
        "--allowed-origin", "https://*.example.com",
        "--allowed-origin", "http://localhost:*",
        "--history", "0",
        "--database", str(tmp_path / "h.sqlite3"),
        "--max-message-size", "1024",
        "--max-text-length", "140",
        "--rate", "2.5",
        "--burst", "5",
        "--max-connections", "50",
        "--max-connections-per-address", "5",
        "--max-send-buffer", "65536",
        "--motd", "hello",
        "--large-room", "2000",
        "--presence-interval", "1.5",
        "--trusted-proxy", "127.0.0.1",
        "--trusted-proxy", "10.0.0.0/8",
    ).config  # fmt: skip
    assert config.allowed_origins == ("https://*.example.com", "http://localhost:*")
    assert config.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert (config.history, config.database) == (0, str(tmp_path / "h.sqlite3"))
    assert (config.chat_max_message_size, config.max_text_length) == (1024, 140)
    assert (config.rate, config.burst) == (2.5, 5)
    assert (config.max_connections, config.max_connections_per_address) == (50, 5)
    assert (config.max_send_buffer, config.motd) == (65536, "hello")
    assert (config.large_room, config.presence_interval) == (2000, 1.5)


def test_chat_defaults() -> None:
    config = parse().config
    assert config.history == 100 and config.database == "chatservice.sqlite3"
    assert config.chat_max_message_size == 65536 and config.max_text_length == 2000
    assert (config.rate, config.burst) == (10, 30)
    assert (config.max_connections, config.max_connections_per_address) == (10000, 100)
    assert config.max_send_buffer == 1024 * 1024
    assert config.chat_compression is True
    assert (config.large_room, config.presence_interval) == (500, 1.0)


@pytest.mark.parametrize(
    ("args", "content", "expected"),
    [
        (["--chat-compression", "off"], "", False),
        (["--chat-compression", "ON"], "", True),
        ([], "chat-compression = false\n", False),
        ([], 'chat-compression = "off"\n', False),
        (["--chat-compression", "on"], "chat-compression = false\n", True),
    ],
)
def test_chat_compression_is_switched_on_the_command_line_or_in_the_file(
    tmp_path: Path, args: list[str], content: str, expected: bool
) -> None:
    config_file = tmp_path / "chat.toml"
    config_file.write_text(content)
    assert parse("-c", str(config_file), *args).config.chat_compression is expected


def test_static_dir_is_taken(tmp_path: Path) -> None:
    assert parse("--static", str(tmp_path)).config.static_dir == tmp_path.resolve()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "nonsense:1"], "Unknown endpoint type: 'nonsense'"),
        (["--port", "tcp:notaport"], "--port 'tcp:notaport'"),
        (["--port", "ssl:8443:privateKey=/nonexistent/key.pem"], "No such file or directory"),
        (["--port", "systemd:domain=INET:index=0"], "no such socket was passed in by systemd"),
        (["--static", "/nonexistent/dir"], "--static '/nonexistent/dir': no such directory"),
        (["--static", "/etc/hostname"], "not a directory"),
        (["--log-level", "loud"], "must be one of debug, info, warn, error"),
        (["--history", "lots"], "--history 'lots': must be a whole number"),
        (["--history", "-1"], "--history '-1': must be at least 0"),
        (["--rate", "0"], "--rate '0': must be at least 0.001"),
        (["--max-connections", "1.5"], "must be a whole number"),
        (["--database", "/nonexistent/dir/chat.sqlite3"], "does not exist"),
        (["--allowed-origin", "chat.example.com"], "not an origin"),
        (["--trusted-proxy", "10.0.0.0/33"], "--trusted-proxy '10.0.0.0/33': not an address"),
        (["--chat-compression", "maybe"], "--chat-compression 'maybe': must be on or off"),
        (["--large-room", "0"], "--large-room '0': must be at least 1"),
        (["--presence-interval", "0"], "--presence-interval '0': must be at least 0.01"),
        (["--no-such-option"], "option --no-such-option not recognized"),
    ],
)
def test_bad_values_give_one_line_and_exit_2(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("twistd chatservice: error: ")
    assert expected in err


# --auth and friends (docs/protocol.md, "Identity").


def rsa_public_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_auth_defaults_to_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATSERVICE_AUTH_SECRET", raising=False)
    config = parse().config
    assert (config.auth, config.auth_secret, config.auth_public_key) == ("off", "", "")
    assert (config.auth_audience, config.auth_issuer, config.auth_refresh_url) == ("", "", "")
    assert (config.auth_leeway, config.auth_timeout, config.private_rooms) == (10.0, 5.0, ())


def test_auth_options_reach_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATSERVICE_AUTH_SECRET", raising=False)
    key_file = tmp_path / "key.pem"
    key_file.write_text(rsa_public_pem())
    config = parse(
        "--auth", "required",
        "--auth-secret", "s3cret",
        "--auth-public-key", str(key_file),
        "--auth-audience", "chat",
        "--auth-issuer", "https://id.example.com",
        "--auth-leeway", "0",
        "--auth-timeout", "2.5",
        "--auth-refresh-url", "https://id.example.com/token",
        "--private-room", "ops",
        "--private-room", "team-*",
    ).config  # fmt: skip
    assert (config.auth, config.auth_secret) == ("required", "s3cret")
    assert config.auth_public_key == str(key_file.resolve())
    assert (config.auth_audience, config.auth_issuer) == ("chat", "https://id.example.com")
    assert (config.auth_leeway, config.auth_timeout) == (0, 2.5)
    assert config.auth_refresh_url == "https://id.example.com/token"
    assert config.private_rooms == ("ops", "team-*")


def test_a_jwks_file_and_the_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jwks = tmp_path / "keys.json"
    jwks.write_text(
        '{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",'
        ' "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'
    )
    assert parse("--auth", "optional", "--auth-public-key", str(jwks)).config.auth_public_key
    monkeypatch.setenv("CHATSERVICE_AUTH_SECRET", "from-env")
    config = parse("--auth", "optional").config
    assert (config.auth, config.auth_secret) == ("optional", "from-env")
    assert parse("--auth", "optional", "--auth-secret", "mine").config.auth_secret == "mine"
    # The environment's secret alone does not turn anything on.
    assert parse().config.auth == "off"


def test_auth_options_in_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATSERVICE_AUTH_SECRET", raising=False)
    config_file = tmp_path / "chat.toml"
    config_file.write_text(
        'auth = "optional"\n'
        'auth-secret = "s3cret"\n'
        "auth-leeway = 30\n"
        'private-room = ["ops", "team-*"]\n'
    )
    config = parse("-c", str(config_file)).config
    assert (config.auth, config.auth_secret, config.auth_leeway) == ("optional", "s3cret", 30)
    assert config.private_rooms == ("ops", "team-*")
    config_file.write_text('auth = "optional"\nauth-secret = "s3cret"\nprivate-room = "ops"\n')
    assert parse("-c", str(config_file)).config.private_rooms == ("ops",)
    assert parse("-c", str(config_file), "--private-room", "x").config.private_rooms == ("x",)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--auth", "maybe"], "--auth 'maybe': must be one of off, optional, required"),
        (["--auth", "required"], "--auth required: needs --auth-secret"),
        (["--auth", "optional"], "--auth optional: needs --auth-secret"),
        (["--private-room", "ops"], "--private-room: needs --auth optional or required"),
        (["--auth-secret", "s"], "--auth-secret: needs --auth optional or required"),
        (["--auth-audience", "chat"], "--auth-audience: needs --auth optional or required"),
        (
            ["--auth", "optional", "--auth-secret", "s", "--private-room", "a b"],
            "--private-room 'a b': not a room name pattern",
        ),
        (
            ["--auth", "optional", "--auth-public-key", "/nonexistent/key.pem"],
            "--auth-public-key '/nonexistent/key.pem': No such file or directory",
        ),
        (
            ["--auth", "optional", "--auth-public-key", "/etc"],
            "--auth-public-key '/etc': Is a directory",
        ),
        (
            ["--auth", "optional", "--auth-secret", "s", "--auth-leeway", "-1"],
            "--auth-leeway '-1': must be at least 0",
        ),
        (
            ["--auth", "optional", "--auth-secret", "s", "--auth-timeout", "0"],
            "--auth-timeout '0': must be at least 0.1",
        ),
        (
            ["--auth", "optional", "--auth-secret", "s", "--auth-refresh-url", "token"],
            "--auth-refresh-url 'token': must be an http(s) URL or a path starting with /",
        ),
        (
            ["--auth", "optional", "--auth-secret", "s", "--auth-refresh-url", "ftp://x/t"],
            "--auth-refresh-url 'ftp://x/t': must be an http(s) URL",
        ),
    ],
)
def test_bad_auth_options_give_one_line_and_exit_2(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("CHATSERVICE_AUTH_SECRET", raising=False)
    with pytest.raises(SystemExit) as exited:
        parse(*args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("twistd chatservice: error: ")
    assert expected in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"hello", "not a PEM public key or a JWKS file"),
        (b"", "not a PEM public key or a JWKS file"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
         "not a PEM public key or a JWKS file"),
        (b'{"keys": []}', "not a PEM public key or a JWKS file"),
        (b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}',
         "JWKS key 's' is not a public key"),
        (b"\xff\xfe not text", "not a PEM public key or a JWKS file"),
    ],
)  # fmt: skip
def test_bad_public_key_files_give_one_line(
    tmp_path: Path, content: bytes, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "x.pem"
    key_file.write_bytes(content)
    with pytest.raises(SystemExit) as exited:
        parse("--auth", "required", "--auth-public-key", str(key_file))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"--auth-public-key {str(key_file)!r}: {expected}" in err


def test_bad_private_room_in_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "chat.toml"
    config_file.write_text('auth = "optional"\nauth-secret = "s"\nprivate-room = [1.5]\n')
    with pytest.raises(SystemExit):
        parse("-c", str(config_file))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "private-room must be a list of strings" in err


# The installed plugin, run as users run it.


def run_twistd(twistd: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(twistd), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_help_lists_every_option(twistd: Path) -> None:
    result = run_twistd(twistd, "chatservice", "--help")
    assert result.returncode == 0
    for option in (
        "--port=",
        "--static=",
        "--log-level=",
        "--allowed-origin=",
        "--history=",
        "--database=",
        "--max-message-size=",
        "--max-text-length=",
        "--rate=",
        "--burst=",
        "--max-connections=",
        "--max-connections-per-address=",
        "--max-send-buffer=",
        "--motd=",
    ):
        assert option in result.stdout
    assert "systemd:domain=INET:index=0" in result.stdout


def test_bad_option_is_one_line_not_a_traceback(twistd: Path, tmp_path: Path) -> None:
    result = run_twistd(twistd, "-n", "--pidfile=", "chatservice", "--port", "bogus:1")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0
    assert "Unknown endpoint type" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "Usage:" not in result.stdout


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_port_in_use_is_one_line_and_non_zero(twistd: Path, busy_port: int, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(twistd), "-n", "chatservice", "--port", f"tcp:{busy_port}:interface=127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(errors) == 1
    assert f"port {busy_port} on 127.0.0.1: Address already in use" in errors[0]
    # twistd's pid file is not left behind.
    assert not (tmp_path / "twistd.pid").exists()


def test_twistd_serves_the_bundled_page_and_echo(twistd: Path, tmp_path: Path) -> None:
    server, port = start_twistd(twistd, cwd=tmp_path)
    try:
        status, headers, body = http_get(port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"app.js" in body
        status, _, body = http_get(port, "/echo.html")
        assert status == 200 and b"echo.js" in body
        with connect(f"ws://127.0.0.1:{port}/echo", subprotocols=["plain-text"]) as ws:
            ws.send("hello")
            assert ws.recv(timeout=10) == "hello"
    finally:
        server.terminate()
        server.wait(10)
    assert server.returncode == 0


def test_api_token_from_the_environment_or_made_up_and_logged_once(
    twistd: Path, tmp_path: Path
) -> None:
    server, port = start_twistd(twistd, "--database", ":memory:", cwd=tmp_path)
    try:
        assert server.stdout is not None
        log = []
        for line in server.stdout:
            log.append(line)
            if "HTTP API token" in line:
                break
        token = log[-1].rsplit(": ", 1)[1].strip()
        assert len(token) >= 24
        assert http_get(port, "/api/rooms")[0] == 401
        assert http_get(port, "/api/rooms", {"Authorization": f"Bearer {token}"})[0] == 200
    finally:
        server.terminate()
        server.wait(10)
    assert sum("HTTP API token" in line for line in log) == 1

    options = parse()
    assert options.config.admin_token_generated
    import os

    os.environ["CHATSERVICE_ADMIN_TOKEN"] = "from-env"
    try:
        assert parse().config.admin_token == "from-env"
        assert parse("--admin-token", "from-option").config.admin_token == "from-option"
    finally:
        del os.environ["CHATSERVICE_ADMIN_TOKEN"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_sends_going_away_waits_and_exits_0(
    twistd: Path, tmp_path: Path, signum: int
) -> None:
    import threading

    from websockets.exceptions import ConnectionClosed

    database = tmp_path / "chat.sqlite3"
    server, port = start_twistd(twistd, "--database", str(database), cwd=tmp_path)
    codes: dict[str, int | None] = {}

    def read_until_closed(name: str, ws: Any) -> None:
        try:
            while True:
                ws.recv(timeout=20)
        except ConnectionClosed as closed:
            codes[name] = closed.rcvd.code if closed.rcvd else None

    try:
        with (
            connect(f"ws://127.0.0.1:{port}/echo") as echo,
            connect(f"ws://127.0.0.1:{port}/chat", subprotocols=["chat.v1.json"]) as chat,
        ):
            chat.recv(timeout=10)  # the welcome: open for sure
            readers = [
                threading.Thread(target=read_until_closed, args=item)
                for item in (("echo", echo), ("chat", chat))
            ]
            for reader in readers:
                reader.start()
            server.send_signal(signum)
            assert server.wait(15) == 0
            for reader in readers:
                reader.join(10)
    finally:
        if server.poll() is None:
            server.kill()
    assert codes == {"echo": 1001, "chat": 1001}
    output = server.stdout.read() if server.stdout else ""
    assert "Traceback" not in output


def test_shutdown_drops_clients_that_do_not_close(twistd: Path, tmp_path: Path) -> None:
    import time

    from net import raw_websocket

    server, port = start_twistd(
        twistd, "--database", ":memory:", "--shutdown-timeout", "1", cwd=tmp_path
    )
    try:
        silent = raw_websocket(port, "/echo")  # never answers the close
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
        assert time.monotonic() - started < 8
        silent.close()
    finally:
        if server.poll() is None:
            server.kill()
    output = server.stdout.read() if server.stdout else ""
    assert "closing handshake timeout" in output  # dropped, not waited for forever


def test_config_file_settings_and_the_command_line_wins(tmp_path: Path) -> None:
    config_file = tmp_path / "chat.toml"
    config_file.write_text(
        'port = ["tcp:9100:interface=127.0.0.1", 9101]\n'
        "history = 200\n"
        'motd = "from the file"\n'
        'allowed-origin = "https://*.example.com"\n'
        "rate = 2.5\n"
        f'database = "{tmp_path / "h.sqlite3"}"\n'
    )
    config = parse("--config", str(config_file), "--motd", "from the command line").config
    assert config.ports == ("tcp:9100:interface=127.0.0.1", "tcp:9101")
    assert config.history == 200 and config.rate == 2.5
    assert config.motd == "from the command line"
    assert config.allowed_origins == ("https://*.example.com",)
    assert config.database == str(tmp_path / "h.sqlite3")
    # A port on the command line replaces the file's ports.
    config = parse("-c", str(config_file), "-p", "9200").config
    assert config.ports == ("tcp:9200",)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("histroy = 5\n", "unknown key 'histroy'"),
        ("history = [1]\n", "history must be a string or a number"),
        ("motd = true\n", "motd must be a string or a number"),
        ("chat-compression = 1\n", "--chat-compression '1': must be on or off"),
        ("history = -3\n", "--history '-3': must be at least 0"),
        ("port = [true]\n", "port must be a list of strings"),
        ('port = ["nope:1"]\n', "Unknown endpoint type"),
        ("this is not toml", "not valid TOML"),
    ],
)
def test_bad_config_files_give_one_line(
    tmp_path: Path, content: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "chat.toml"
    config_file.write_text(content)
    with pytest.raises(SystemExit):
        parse("--config", str(config_file))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


def test_the_shipped_example_config_is_valid_and_shows_the_defaults() -> None:
    import dataclasses

    example = Path(__file__).resolve().parent.parent / "etc" / "chatservice.toml"
    from_file = parse("--config", str(example)).config
    defaults = parse().config
    assert dataclasses.replace(from_file, admin_token="") == dataclasses.replace(
        defaults, admin_token=""
    )


def test_json_log_lines_with_structured_fields(twistd: Path, tmp_path: Path) -> None:
    import json as json_module

    server = subprocess.Popen(
        [str(twistd), "--logger", "chatservice.logs.json_lines", "-n", "--pidfile=",
         "chatservice", "--database", ":memory:", "--port", "tcp:0:interface=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    events = []
    try:
        assert server.stdout is not None
        for line in server.stdout:
            events.append(json_module.loads(line))
            if "chatservice listening" in events[-1].get("log_format", ""):
                break
        port = events[-1]["port"]
        assert events[-1]["host"] == "127.0.0.1"
        with connect(f"ws://127.0.0.1:{port}/echo") as ws:
            ws.send("x")
            ws.recv(timeout=10)
        for line in server.stdout:
            events.append(json_module.loads(line))
            if "closed" in events[-1].get("log_format", ""):
                break
    finally:
        server.terminate()
        server.wait(10)
    opened = [e for e in events if e.get("log_namespace") == "chatservice.protocol"]
    assert opened[0]["path"] == "/echo" and opened[0]["conn_id"] >= 1
    assert opened[-1]["code"] == 1000 and opened[-1]["conn_id"] == opened[0]["conn_id"]


def test_sighup_reloads_motd_origins_and_log_level(twistd: Path, tmp_path: Path) -> None:
    import time

    from websockets.exceptions import InvalidStatus

    config_file = tmp_path / "chat.toml"
    config_file.write_text('motd = "first"\n')
    server, port = start_twistd(
        twistd, "--config", str(config_file), "--database", ":memory:", cwd=tmp_path
    )
    url = f"ws://127.0.0.1:{port}/chat"
    origin = "https://app.example.com"

    def welcome() -> str:
        with connect(url) as ws:
            return str(ws.recv(timeout=10))

    def origin_status() -> int:
        try:
            with connect(url, origin=origin):  # type: ignore[arg-type]
                return 101
        except InvalidStatus as refused:
            return int(refused.response.status_code)

    try:
        assert welcome().endswith("first")
        assert origin_status() == 403
        config_file.write_text(f'motd = "second"\nallowed-origin = ["{origin}"]\nhistory = 5\n')
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not welcome().endswith("second"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert origin_status() == 101
        config_file.write_text("motd = [not toml")
        server.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert welcome().endswith("second")  # a broken file changes nothing
    finally:
        server.terminate()
        server.wait(10)
    output = server.stdout.read() if server.stdout else ""
    assert "SIGHUP: reloaded motd, allowed_origins; needs a restart to change: history" in output
    assert "SIGHUP: the configuration is not valid; nothing changed" in output


def test_sighup_reopens_the_log_file_after_logrotate_moved_it(twistd: Path, tmp_path: Path) -> None:
    import time

    log = tmp_path / "chatservice.log"
    server = subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", "--logfile", str(log), "chatservice",
         "--database", ":memory:", "--port", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while "chatservice listening" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = int(re.findall(r"port=(\d+)", log.read_text())[0])
        time.sleep(0.3)  # READY: our signal handlers are in place
        log.rename(tmp_path / "chatservice.log.1")
        server.send_signal(signal.SIGHUP)
        while not log.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with connect(f"ws://127.0.0.1:{port}/echo") as ws:
            ws.send("x")
            ws.recv(timeout=10)
        while "conn=1 open" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.terminate()
        server.wait(10)
    assert "conn=1 open" not in (tmp_path / "chatservice.log.1").read_text()


def test_log_level_warn_writes_no_info_lines(twistd: Path, tmp_path: Path) -> None:
    config_file = tmp_path / "chat.toml"
    config_file.write_text('log-level = "info"\n')
    server, port = start_twistd(
        twistd, "--config", str(config_file), "--database", ":memory:", cwd=tmp_path
    )
    assert server.stdout is not None

    def use_it() -> None:
        with connect(f"ws://127.0.0.1:{port}/chat") as ws:
            ws.recv(timeout=10)
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read()

    def lines_until(text: str) -> list[str]:
        assert server.stdout is not None
        lines = []
        for line in server.stdout:
            lines.append(line)
            if text in line:
                return lines
        raise AssertionError(f"no {text!r} in {lines}")

    try:
        use_it()
        at_info = lines_until('"GET /healthz HTTP/1.1" 200')
        config_file.write_text('log-level = "warn"\n')
        server.send_signal(signal.SIGHUP)
        lines_until("SIGHUP: reloaded log_level")
        use_it()
        config_file.write_text("log-level = [not toml")
        server.send_signal(signal.SIGHUP)  # a warning: the mark after the quiet part
        at_warn = lines_until("SIGHUP: the configuration is not valid")
    finally:
        server.terminate()
        server.wait(10)
    assert any("chatservice.protocol#info" in line and " open " in line for line in at_info)
    assert any("chatservice.hub#info" in line for line in at_info)
    # A chat connection and an HTTP request at warn: not a line of them.
    assert at_warn[-1].split(" ", 1)[1].startswith("[chatservice.service#warn]")
    assert [line for line in at_warn if "#info]" in line or "GET /" in line] == []


def test_the_listening_line_is_written_at_any_log_level(twistd: Path, tmp_path: Path) -> None:
    # Scripts read the port from it (start_twistd does).
    server, port = start_twistd(
        twistd, "--log-level", "error", "--database", ":memory:", cwd=tmp_path
    )
    try:
        assert port > 0
    finally:
        server.terminate()
        server.wait(10)
