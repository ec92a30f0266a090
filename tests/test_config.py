"""Settings: defaults, TOML file, environment overrides, and validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from voice_agent.config import Config, VadConfig, describe, load_config
from voice_agent.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "voice-agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(**kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)  # type: ignore[arg-type]
    assert info.value.code == "config_invalid"
    return info.value


def test_defaults_validate() -> None:
    config = load_config(env={})
    assert config == Config()
    assert config.validate() is config
    assert config.vad.end_silence_ms == 450
    assert config.server.host == "127.0.0.1"


def test_process_environment_is_read_when_env_is_not_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOICE_AGENT_VAD__AGGRESSIVENESS", "3")
    assert load_config().vad.aggressiveness == 3


def test_toml_file_overrides_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
[vad]
end_silence_ms = 700
max_utterance_s = 12  # an integer for a float setting is fine

[llm]
system_prompt = "Be terse."
temperature = 0.0

[server]
port = 0
""")
    config = load_config(path, env={})
    assert config.vad.end_silence_ms == 700
    assert config.vad.max_utterance_s == 12.0
    assert isinstance(config.vad.max_utterance_s, float)
    assert config.llm.system_prompt == "Be terse."
    assert config.llm.temperature == 0.0
    assert config.server.port == 0
    # Everything else keeps its default.
    assert config.vad.start_speech_ms == VadConfig().start_speech_ms
    assert config.asr == Config().asr


def test_env_overrides_file_with_type_coercion(tmp_path: Path) -> None:
    path = write(tmp_path, "[vad]\nend_silence_ms = 700\n")
    config = load_config(path, env={
        "VOICE_AGENT_VAD__END_SILENCE_MS": "500",
        "VOICE_AGENT_LLM__TOP_P": "0.5",
        "VOICE_AGENT_ASR__DEVICE": "cpu",
        "VOICE_AGENT_FRONTEND__NOISE_SUPPRESSION": " 3 ",
        "OTHER_VARIABLE": "ignored",
        "VOICE_AGENT_NOT_A_SETTING": "ignored: no double underscore",
    })
    assert config.vad.end_silence_ms == 500
    assert isinstance(config.vad.end_silence_ms, int)
    assert config.llm.top_p == 0.5
    assert config.asr.device == "cpu"
    assert config.frontend.noise_suppression == 3


def test_overrides_win_and_none_means_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n")
    config = load_config(path, env={"VOICE_AGENT_SERVER__PORT": "9001"},
                         overrides={"server": {"port": 9002, "host": None}})
    assert config.server.port == 9002
    assert config.server.host == "127.0.0.1"


def test_unknown_section_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[vadd]\nend_silence_ms = 500\n")
    error = config_error(path=path, env={})
    assert "vadd" in error.message
    assert str(path) in error.message


def test_top_level_value_in_file_is_an_unknown_section(tmp_path: Path) -> None:
    error = config_error(path=write(tmp_path, "vad = 3\n"), env={})
    assert "vad" in error.message


def test_unknown_key_in_file(tmp_path: Path) -> None:
    error = config_error(path=write(tmp_path, "[vad]\nend_silence = 500\n"), env={})
    assert "vad.end_silence" in error.message


def test_unknown_section_in_env() -> None:
    error = config_error(env={"VOICE_AGENT_VADD__END_SILENCE_MS": "500"})
    assert "VOICE_AGENT_VADD__END_SILENCE_MS" in error.message


def test_unknown_key_in_env() -> None:
    error = config_error(env={"VOICE_AGENT_VAD__END_SILENCE": "500"})
    assert "vad.end_silence" in error.message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("vad", "end_silence_ms", "soon"),
        ("vad", "end_silence_ms", "4.5"),
        ("llm", "temperature", "warm"),
    ],
)
def test_uncoercible_env_value(section: str, key: str, value: str) -> None:
    error = config_error(env={f"VOICE_AGENT_{section.upper()}__{key.upper()}": value})
    assert f"{section}.{key}" in error.message


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[vad]\nend_silence_ms = true\n", "vad.end_silence_ms"),
        ("[vad]\nend_silence_ms = 450.5\n", "vad.end_silence_ms"),
        ("[llm]\nsystem_prompt = 3\n", "llm.system_prompt"),
        ("[llm]\ntemperature = [1]\n", "llm.temperature"),
        ("[llm]\ntemperature = true\n", "llm.temperature"),
    ],
)
def test_wrong_types_in_file(tmp_path: Path, text: str, where: str) -> None:
    error = config_error(path=write(tmp_path, text), env={})
    assert where in error.message


def test_numbers_written_as_strings_or_whole_floats_are_coerced(tmp_path: Path) -> None:
    path = write(tmp_path, '[vad]\nend_silence_ms = "500"\nstart_speech_ms = 80.0\n')
    config = load_config(path, env={})
    assert config.vad.end_silence_ms == 500
    assert config.vad.start_speech_ms == 80
    assert isinstance(config.vad.start_speech_ms, int)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("vad", "end_silence_ms", "99"),
        ("vad", "end_silence_ms", "5001"),
        ("vad", "aggressiveness", "4"),
        ("vad", "engine", "energy"),
        ("vad", "max_utterance_s", "0.5"),
        ("frontend", "noise_suppression", "5"),
        ("llm", "top_p", "0"),
        ("llm", "n_ctx", "100"),
        ("asr", "device", "tpu"),
        ("asr", "window_s", "3"),
        ("tts", "length_scale", "5"),
        ("tts", "first_chunk_min_words", "0"),
        ("tts", "first_chunk_max_words", "2"),
        ("server", "port", "65536"),
        ("server", "max_sessions", "0"),
    ],
)
def test_out_of_range_values_are_rejected(section: str, key: str, value: str) -> None:
    error = config_error(env={f"VOICE_AGENT_{section.upper()}__{key.upper()}": value})
    assert f"{section}.{key}" in error.message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("vad", "end_silence_ms", "100"),
        ("vad", "end_silence_ms", "5000"),
        ("asr", "window_s", "0"),
        ("asr", "window_s", "30"),
        ("tts", "first_chunk_max_words", "0"),
        ("tts", "first_chunk_max_words", "3"),
        ("server", "port", "65535"),
    ],
)
def test_range_limits_are_inclusive(section: str, key: str, value: str) -> None:
    config = load_config(env={f"VOICE_AGENT_{section.upper()}__{key.upper()}": value})
    assert getattr(getattr(config, section), key) == float(value)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[vad\nend_silence_ms = \n")
    error = config_error(path=path, env={})
    assert str(path) in error.message
    assert "TOML" in error.message


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    error = config_error(path=path, env={})
    assert str(path) in error.message


def test_every_setting_has_a_default_that_describe_reports() -> None:
    described = describe(load_config(env={}))
    for section in dataclasses.fields(Config):
        values = described[section.name]
        names = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(values) == names
