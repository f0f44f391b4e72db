"""Settings: defaults < settings file < SERVING_* env vars < command-line flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from inference import available_cpus
from serving import __main__
from serving.ops.settings import Settings
from tests.serving.conftest import run_cli, running_app


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    file = tmp_path / "serving.yaml"
    file.write_text("port: 7000\nlog_level: debug\nmax_batch_rows: 5\nproviders: [cuda, cpu]\n")
    monkeypatch.setenv("SERVING_LOG_LEVEL", "warning")
    monkeypatch.setenv("SERVING_MODELS", "iris, side_effects")
    settings = Settings.load(settings_file=file, max_batch_rows=9)
    assert settings.port == 7000  # file
    assert settings.log_level == "warning"  # env over file
    assert settings.max_batch_rows == 9  # flag over file
    assert settings.providers == ["cuda", "cpu"]
    assert settings.models == ["iris", "side_effects"]


def test_defaults_are_safe():
    settings = Settings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8080, 1)
    assert settings.api_key is None
    assert settings.max_body_bytes == 64 * 1024 * 1024
    assert settings.providers == ["cpu"] and not settings.allow_cpu_fallback


def test_unknown_settings_are_refused(tmp_path: Path):
    file = tmp_path / "s.json"
    file.write_text('{"prot": 80}')
    with pytest.raises(ValueError, match="prot"):
        Settings.load(settings_file=file)


def test_worker_processes_share_the_cpus_between_their_sessions():
    cpus = available_cpus()
    assert Settings().session_threads == cpus
    assert Settings(workers=2).session_threads == max(1, cpus // 2)
    assert Settings(workers=cpus * 4).session_threads == 1
    assert Settings(workers=2, intra_op_threads=3).session_threads == 3  # set: as set


def test_the_served_sessions_use_those_threads():
    with running_app(workers=2, models=["iris"]) as client:
        model = client.app.dataplane.model("iris")  # type: ignore[attr-defined]
        threads = model.session.get_session_options().intra_op_num_threads
    assert threads == max(1, available_cpus() // 2)


def test_workers_auto_is_one_per_cpu_and_anything_else_is_explained():
    assert Settings(workers="auto").workers == available_cpus()  # type: ignore[arg-type]
    assert Settings(workers="2").workers == 2  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="'two' is neither a number of processes nor auto"):
        Settings(workers="two")  # type: ignore[arg-type]


def test_cli_explains_bad_workers_in_one_line():
    result = run_cli("--repo", "models", "--workers", "two")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid settings: workers: Value error, "
        "'two' is neither a number of processes nor auto"
    ]


def test_connection_limits_come_from_file_env_and_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    file = tmp_path / "serving.yaml"
    file.write_text("header_timeout_s: 3\nmax_headers: 20\nmax_connections: 50\n")
    monkeypatch.setenv("SERVING_MAX_HEADERS", "30")
    settings = Settings.load(settings_file=file, max_connections=70)
    assert (settings.header_timeout_s, settings.max_headers, settings.max_connections) == (
        3,
        30,
        70,
    )
    with pytest.raises(ValidationError, match="max_header_bytes"):
        Settings(max_header_bytes=10)  # too small for any request line


def test_every_setting_is_a_flag_listed_by_help():
    text = run_cli("--help").stdout
    missing = [n for n in Settings.model_fields if f"--{n.replace('_', '-')} " not in text]
    assert not missing, f"settings without a flag in --help: {missing}"


def test_flags_reach_the_settings_as_env_and_file_values_do():
    given = __main__.parse_args(
        ["--api-key", "k", "--inline-max-us", "0", "--no-reuse-port", "--log-json",
         "--max-batch-rows", "5", "--request-timeout-s", "2.5", "--models", "iris,digits",
         "--workers", "auto", "--log-level", "debug"]
    )  # fmt: skip
    settings = Settings.load(**given)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k"
    assert (settings.inline_max_us, settings.reuse_port, settings.log_json) == (0, False, True)
    assert (settings.max_batch_rows, settings.request_timeout_s) == (5, 2.5)
    assert settings.models == ["iris", "digits"] and settings.log_level == "debug"
    assert settings.workers >= 1
    assert __main__.parse_args([]) == {}  # what no flag names stays the env's or the file's


def test_a_bad_flag_value_is_one_line():
    result = run_cli("--repo", "models", "--max-batch-rows", "many")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: invalid settings: max_batch_rows: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]
