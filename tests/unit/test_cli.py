"""The command line on top: explain's target, the client options as a config object."""

from cli.main import build_parser, main
from core.options import from_namespace
from service.config import ClientConfig


def test_explain_refuses_a_target_that_is_neither_a_model_directory_nor_an_address(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "nosuch"), "a fine film"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"protolm explain: error: {tmp_path / 'nosuch'}: no such model directory, and not a HOST:PORT server address"]


def test_client_options_are_flags_and_variables(monkeypatch):
    monkeypatch.setenv("PROTOLM_SERVER", "protolm.example:7000")
    monkeypatch.setenv("PROTOLM_CLIENT_TIMEOUT", "2.5")
    monkeypatch.setenv("PROTOLM_CLIENT_TOKEN", "secret")
    parser = build_parser()
    config = from_namespace(ClientConfig, parser.parse_args(["classify", "a text"]))
    assert config == ClientConfig(server="protolm.example:7000", token="secret", tls_ca=None, timeout=2.5)
    config = from_namespace(ClientConfig, parser.parse_args(["health", "--server", "localhost:1", "--timeout", "3"]))
    assert (config.server, config.timeout) == ("localhost:1", 3.0)
    explain = parser.parse_args(["explain", "localhost:50051", "a text"])
    assert from_namespace(ClientConfig, explain).timeout == 2.5 and explain.top_prototypes == 3


def test_client_commands_answer_a_missing_server_or_a_bad_request_in_one_line(capsys):
    import socket

    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = f"127.0.0.1:{port}"
    for argv in (["classify", "--server", target, "--timeout", "2", "a film"], ["health", "--server", target, "--timeout", "2"],
                 ["explain", target, "a film", "--timeout", "2"]):
        assert main(argv) == 4  # exit code: no server
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"protolm {argv[0]}: error: UNAVAILABLE: no server at {target} (is `protolm serve` running?)"]


def test_debug_shows_the_traceback(tmp_path):
    import pytest

    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="no such model directory"):
        main(["--debug", "explain", str(tmp_path / "nosuch"), "a fine film"])
