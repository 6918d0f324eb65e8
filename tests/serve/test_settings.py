"""Settings: TEI's flags, env vars and defaults; CLI over env; HOSTNAME from the shell."""

from __future__ import annotations

import socket

import pytest

from tei_ort.serve.settings import (
    ANY_ADDRESS,
    FLAGS,
    build_parser,
    load_settings,
    resolve_bind_host,
)


def test_defaults_match_tei() -> None:
    s = load_settings([], {})
    assert (s.max_concurrent_requests, s.max_batch_tokens, s.max_batch_requests) == (
        512,
        16384,
        None,
    )
    assert (s.auto_truncate, s.payload_limit, s.hostname, s.port) == (
        True,
        2_000_000,
        "0.0.0.0",
        3000,
    )
    assert s.otlp_service_name == "text-embeddings-inference.server" and s.prometheus_port == 9000
    # README: "defaults to 2048 (TEI: 32), so clients that send 1,000 texts per request work".
    assert s.max_client_batch_size == 2048


def test_env_then_cli() -> None:
    env = {
        "MODEL_ID": "env/model",
        "PORT": "80",
        "AUTO_TRUNCATE": "false",
        "MAX_BATCH_TOKENS": "4096",
        "CORS_ALLOW_ORIGIN": "https://a,https://b",
        "API_KEY": "sekrit-key",
        "TASK": "sentence-similarity",
    }
    s = load_settings(["--port", "8080", "--json-output"], env)
    assert (s.model_id, s.port, s.auto_truncate, s.max_batch_tokens) == (
        "env/model",
        8080,
        False,
        4096,
    )
    assert (
        s.cors_allow_origin == ("https://a", "https://b")
        and s.json_output
        and s.task == "sentence-similarity"
    )
    assert load_settings(["--auto-truncate", "true"], env).auto_truncate is True
    assert "sekrit" not in str(s.redacted()) and "sekrit" not in repr(s)


def test_dtype_maps_to_variant_and_prompts_exclude() -> None:
    assert load_settings(["--dtype", "float16"], {}).variant_name == "fp16"
    assert load_settings(["--dtype", "float16", "--variant", "int8"], {}).variant_name == "int8"
    with pytest.raises(ValueError, match="mutually exclusive"):
        load_settings(["--default-prompt", "q: ", "--default-prompt-name", "query"], {})


def test_help_documents_every_flag_with_its_env_var() -> None:
    text = " ".join(build_parser().format_help().split())
    for flag in FLAGS:
        assert f"--{flag.name.replace('_', '-')}" in text and f"env: {flag.env}" in text


def test_shell_hostname_does_not_break_binding() -> None:
    machine = socket.gethostname()
    assert load_settings([], {"HOSTNAME": machine}).bind_host() == ANY_ADDRESS
    assert load_settings([], {"HOSTNAME": "no-such-host.invalid"}).bind_host() == ANY_ADDRESS
    assert load_settings([], {"HOSTNAME": "127.0.0.1"}).bind_host() == "127.0.0.1"
    assert (
        load_settings(["--hostname", "localhost"], {"HOSTNAME": machine}).bind_host() == "localhost"
    )
    assert resolve_bind_host("localhost", from_env=True) == "localhost"


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (
            ["--engine-replicas", "0"],
            {},
            "--engine-replicas (ENGINE_REPLICAS): Input should be greater than or equal to 1, "
            "got '0'",
        ),
        (
            [],
            {"MAX_BATCH_TOKENS": "lots"},
            "--max-batch-tokens (MAX_BATCH_TOKENS): Input should be a valid integer",
        ),
        (
            ["--default-prompt", "a", "--default-prompt-name", "b"],
            {},
            "--default-prompt and --default-prompt-name are mutually exclusive",
        ),
    ],
)
def test_a_refused_value_is_a_usage_error_not_a_traceback(
    argv: list[str], env: dict[str, str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tei_ort.serve import cli

    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"tei-serve: error: {said}" in err
    assert "Traceback" not in err and "pydantic" not in err


def test_a_refused_secret_is_not_echoed() -> None:
    import pydantic

    from tei_ort.serve.settings import Settings, describe_invalid

    with pytest.raises(pydantic.ValidationError) as refused:
        Settings.model_validate({"api_key": 123})
    said = describe_invalid(refused.value)
    assert said.startswith("--api-key (API_KEY): Input should be a valid string")
    assert "123" not in said


def test_hf_api_token_is_teis_deprecated_alias_of_hf_token() -> None:
    alias = load_settings(["--hf-api-token", "hf_alias"], {})
    assert (alias.hf_token, alias.hf_api_token_given) == ("hf_alias", True)
    from_env = load_settings([], {"HF_API_TOKEN": "hf_env_alias"})
    assert (from_env.hf_token, from_env.hf_api_token_given) == ("hf_env_alias", True)
    # --hf-token (or HF_TOKEN) wins; the alias was still given (TEI warns then too)
    both = load_settings(["--hf-api-token", "hf_alias"], {"HF_TOKEN": "hf_real"})
    assert (both.hf_token, both.hf_api_token_given) == ("hf_real", True)
    assert load_settings([], {}).hf_api_token_given is False
    assert "hf_alias" not in str(alias.redacted()) and "hf_alias" not in repr(alias)
    assert "hf_api_token_given" not in alias.redacted()


def test_uds_path_and_disable_spans_parse_as_tei_does() -> None:
    s = load_settings(["--uds-path", "/tmp/sock", "--disable-spans"], {})
    assert (s.uds_path, s.disable_spans) == ("/tmp/sock", True)
    env = load_settings([], {"UDS_PATH": "/run/x", "DISABLE_SPANS": "true"})
    assert (env.uds_path, env.disable_spans) == ("/run/x", True)
    assert (
        load_settings(["--disable-spans", "false"], {"DISABLE_SPANS": "true"}).disable_spans
        is False
    )
    defaults = load_settings([], {})
    assert (defaults.uds_path, defaults.disable_spans) == (None, False)
