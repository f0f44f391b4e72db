"""YAML as people write it (1.2 core schema) and bounded, wherever the product reads YAML:
the training spec, a model's `serving:` section, and the server's settings file."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from inference.yaml_files import MAX_DEPTH, MAX_VALUES, YamlError, load_yaml, parse_yaml
from serving.ops.settings import Settings
from training.spec import SpecError, load_spec

# 400 bytes that expand to 9**7 (4.8 million) strings once walked.
BOMB = "\n".join(
    [f"a0: &a0 [{', '.join(['lol'] * 9)}]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-4", 1e-4),
        ("1.0e+30", 1e30),
        ("-.5", -0.5),
        ("1.", 1.0),
        (".inf", float("inf")),
        ("-.Inf", float("-inf")),
        ("010", 10),  # YAML 1.1 read 8 (octal)
        ("0o17", 15),
        ("0x1f", 31),
        ("+3", 3),
        ("true", True),
        ("False", False),
        ("yes", "yes"),  # YAML 1.1 read True
        ("no", "no"),
        ("on", "on"),
        ("off", "off"),
        ("y", "y"),
        ("2024-01-01", "2024-01-01"),  # YAML 1.1 read a date
        ("1_000", "1_000"),
        ("~", None),
        ("null", None),
        ("", None),
        ("'1e-4'", "1e-4"),
    ],
)
def test_scalars_follow_the_yaml_1_2_core_schema(text: str, value: object):
    assert parse_yaml(f"key: {text}", "f.yaml") == {"key": value}


def test_not_a_number_is_a_float_nan():
    nan = parse_yaml("key: .nan", "f.yaml")["key"]
    assert math.isnan(nan)


def test_aliases_and_merge_keys_still_work():
    text = "dense: &dense {units: 8, activation: relu}\nlayers: [*dense, {<<: *dense, units: 2}]"
    assert parse_yaml(text, "f.yaml")["layers"] == [
        {"units": 8, "activation": "relu"},
        {"units": 2, "activation": "relu"},
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BOMB, f"f.yaml: expands to more than {MAX_VALUES:,} values through its aliases"),
        ("a: &a [1, *a]", "f.yaml: an alias refers to a value that contains it (a loop)"),
        ("[" * 60 + "]" * 60, f"f.yaml: nested more than {MAX_DEPTH} levels deep"),
        ("[" * 20_000 + "]" * 20_000, "f.yaml: nested too deep to be a spec"),
        ("a: 1\nb: 2\na: 3", "f.yaml: not valid YAML: key 'a' given twice at line 3, column 1"),
        ("a: [1, 2", "f.yaml: not valid YAML: while parsing a flow sequence expected ',' or ']'"),
        ("{[1]: 2}", "f.yaml: not valid YAML: while constructing a mapping found unhashable key"),
    ],
)
def test_what_cannot_be_data_is_one_line_in_bounded_time(text: str, message: str):
    started = time.perf_counter()
    with pytest.raises(YamlError) as e:
        parse_yaml(text, "f.yaml")
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)
    assert time.perf_counter() - started < 5  # seconds: the walk is the document, not its expansion


@pytest.mark.parametrize(
    ("data", "value_or_message"),
    [
        ("key: 1".encode("utf-16"), {"key": 1}),
        (b"\xef\xbb\xbfkey: 1", {"key": 1}),
        (b"key: caf\xe9", "f.yaml: not utf-8 text (byte 0xe9 at offset 8); save the file as UTF-8"),
        (b"key: 1" + b"#" * (1 << 20), "f.yaml: 1,048,582 bytes; a YAML file here holds at most"),
    ],
)
def test_bytes_are_utf8_or_carry_a_bom(data: bytes, value_or_message: object):
    if isinstance(value_or_message, dict):
        assert parse_yaml(data, "f.yaml") == value_or_message
    else:
        with pytest.raises(YamlError) as e:
            parse_yaml(data, "f.yaml")
        assert str(e.value).startswith(str(value_or_message))


def test_an_unreadable_file_is_named(tmp_path: Path):
    with pytest.raises(YamlError, match=rf"^{tmp_path}: cannot read it: Is a directory$"):
        load_yaml(tmp_path)


def test_the_spec_takes_numbers_as_people_write_them(iris_spec: Path):
    text = iris_spec.read_text().replace("learning_rate: 0.01", "learning_rate: 1e-4")
    iris_spec.write_text(text)
    spec, _ = load_spec(iris_spec)
    assert spec.compile.optimizer.params["learning_rate"] == 1e-4


def test_a_spec_with_an_alias_bomb_is_refused_at_once(iris_spec: Path):
    iris_spec.write_text(iris_spec.read_text() + "\nserving:\n  " + BOMB.replace("\n", "\n  "))
    with pytest.raises(SpecError, match=r"expands to more than 10,000 values"):
        load_spec(iris_spec)


def test_a_settings_file_with_an_alias_bomb_is_refused(tmp_path: Path):
    file = tmp_path / "settings.yaml"
    file.write_text(BOMB)
    with pytest.raises(
        ValueError, match=rf"^settings file {file}: expands to more than 10,000 values"
    ):
        Settings.load(settings_file=file)


@pytest.fixture
def iris_spec(tmp_path: Path) -> Path:
    folder = tmp_path / "iris"
    folder.mkdir()
    source = Path(__file__).parents[2] / "models" / "iris" / "model.yaml"
    (folder / "model.yaml").write_text(source.read_text())
    return folder / "model.yaml"
