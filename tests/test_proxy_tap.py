"""The proxies' options: on the command line, in the TOML file, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_tap import parse

AUTH = ("--auth", "optional", "--auth-secret", "s")


def test_proxy_options_reach_the_config() -> None:
    config = parse(
        *AUTH,
        "--connect-proxy", "https://app.example.com/chat/connect",
        "--publish-proxy", "http://127.0.0.1:8000/publish",
        "--join-proxy", "http://app/join",
        "--join-proxy-room", "team-*",
        "--join-proxy-room", "ops",
        "--proxy-header", "Cookie",
        "--proxy-header", "Authorization",
        "--proxy-header", "cookie",
        "--proxy-timeout", "0.25",
    ).config  # fmt: skip
    assert config.connect_proxy == "https://app.example.com/chat/connect"
    assert config.publish_proxy == "http://127.0.0.1:8000/publish"
    assert config.join_proxy == "http://app/join"
    assert config.join_proxy_rooms == ("team-*", "ops")
    assert config.proxy_headers == ("cookie", "authorization")
    assert config.proxy_timeout == 0.25


def test_without_proxy_options_nobody_is_asked() -> None:
    config = parse().config
    assert (config.connect_proxy, config.publish_proxy, config.join_proxy) == ("", "", "")
    assert config.proxy_timeout == 1.0
    # A publish or join proxy needs no --auth.
    assert parse("--publish-proxy", "http://app/p").config.publish_proxy == "http://app/p"


def test_proxy_options_in_the_config_file(tmp_path: Path) -> None:
    config_file = tmp_path / "chat.toml"
    config_file.write_text(
        'auth = "required"\nauth-secret = "s"\n'
        'connect-proxy = "http://app/connect"\n'
        'proxy-header = ["Cookie"]\n'
        'join-proxy = "http://app/join"\n'
        'join-proxy-room = "team-*"\n'
        "proxy-timeout = 2\n"
    )
    config = parse("-c", str(config_file)).config
    assert config.connect_proxy == "http://app/connect"
    assert config.proxy_headers == ("cookie",)
    assert config.join_proxy_rooms == ("team-*",)
    assert config.proxy_timeout == 2.0
    # The command line wins.
    assert parse("-c", str(config_file), "--proxy-timeout", "0.5").config.proxy_timeout == 0.5


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--connect-proxy", "http://app/c"],
         "--connect-proxy: needs --auth optional or required"),
        ([*AUTH, "--connect-proxy", "ftp://app/c"],
         "--connect-proxy 'ftp://app/c': must be an http:// or https:// URL"),
        (["--publish-proxy", "app.example.com/publish"],
         "--publish-proxy 'app.example.com/publish': must be an http:// or https:// URL"),
        (["--join-proxy", "http://"], "--join-proxy 'http://': must be an http:// or https://"),
        (["--publish-proxy", "http://app/p", "--proxy-timeout", "0"],
         "--proxy-timeout '0': must be a positive number of seconds"),
        (["--proxy-timeout", "-1"], "--proxy-timeout '-1': must be a positive number"),
        (["--proxy-timeout", "nan"], "--proxy-timeout 'nan': must be a positive number"),
        (["--proxy-timeout", "soon"], "--proxy-timeout 'soon': must be a positive number"),
        ([*AUTH, "--connect-proxy", "http://app/c", "--proxy-header", "Bad Header"],
         "--proxy-header 'Bad Header': not a header name"),
        ([*AUTH, "--connect-proxy", "http://app/c", "--proxy-header", "X:y"],
         "--proxy-header 'X:y': not a header name"),
        (["--proxy-header", "Cookie"], "--proxy-header: needs --connect-proxy"),
        (["--join-proxy-room", "team-*"], "--join-proxy-room: needs --join-proxy"),
        (["--join-proxy", "http://app/j", "--join-proxy-room", "team a"],
         "--join-proxy-room 'team a': not a room name pattern"),
    ],
)  # fmt: skip
def test_bad_proxy_options_give_one_line_and_exit_2(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("twistd chatservice: error: ")
    assert expected in err


def test_bad_proxy_options_in_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "chat.toml"
    config_file.write_text('join-proxy = "http://app/j"\njoin-proxy-room = ["ok", "not ok"]\n')
    with pytest.raises(SystemExit):
        parse("-c", str(config_file))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--join-proxy-room 'not ok': not a room name pattern" in err
