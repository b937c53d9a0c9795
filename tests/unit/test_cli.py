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
