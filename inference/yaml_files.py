"""YAML as people write it: YAML 1.2's core schema, each key once, and a bounded size.

PyYAML implements YAML 1.1, where `1e-4` is a string and `yes`, `no`, `on`, `off` and `y` are
booleans, so `learning_rate: 1e-4` was refused and `class: no` became `False`. Every YAML file
the product reads (`model.yaml`: the training spec and its `serving:` section; the server's
settings file) goes through `load_yaml`, which reads with YAML 1.2's core schema instead:
numbers as any language writes them, booleans only `true`/`false`, dates left as strings.

It also bounds what a small file can ask for. Aliases (`*name`) are kept, since people use
them to repeat a layer, but a document that expands to more than `MAX_VALUES` values through
them (the "billion laughs": 400 bytes, a billion strings once walked) or nests deeper than
`MAX_DEPTH`, refers to itself, or is not text, is refused in one line before anyone walks it.
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20
"""A spec or settings file is a few kilobytes; anything past a mebibyte is not one."""
MAX_VALUES = 10_000
"""Values in the document once every alias is expanded (a spec has a few hundred)."""
MAX_DEPTH = 50
"""Nesting of mappings and lists (a spec nests four or five deep)."""


class YamlError(ValueError):
    """A YAML file cannot be read as data; the message is one line and names the file."""


def load_yaml(path: Path) -> Any:
    """The data of a YAML file (None if it is empty), with the rules in the module docstring."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise YamlError(f"{path}: cannot read it: {e.strerror or e}") from None
    return parse_yaml(data, str(path))


def parse_yaml(data: bytes | str, origin: str) -> Any:
    """The data of one YAML document; `origin` names it in messages."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise YamlError(
                f"{origin}: {len(data):,} bytes; a YAML file here holds at most {MAX_BYTES:,}"
            )
        text = _decode(data, origin)
    else:
        text = data
    loader = _Loader(text)
    loader.name = origin  # YAML's messages say where: `in "<origin>", line 3, column 9`
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, origin)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:  # what is wrong and where, without PyYAML's snippet
        mark = e.problem_mark or e.context_mark
        what = " ".join(part for part in (e.context, e.problem) if part)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise YamlError(f"{origin}: not valid YAML: {what}{where}") from None
    except yaml.YAMLError as e:
        raise YamlError(f"{origin}: not valid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise YamlError(
            f"{origin}: nested too deep to be a spec (at most {MAX_DEPTH} levels)"
        ) from None
    finally:
        loader.dispose()


def _decode(data: bytes, origin: str) -> str:
    """UTF-8 (with or without a BOM), or UTF-16/32 with its BOM, as the YAML spec allows."""
    boms = (
        (codecs.BOM_UTF32_LE, "utf-32"),
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    )
    encoding = next((name for bom, name in boms if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise YamlError(
            f"{origin}: not {encoding.removesuffix('-sig')} text (byte {data[e.start]:#04x} at "
            f"offset {e.start}); save the file as UTF-8"
        ) from None


def _check_size(root: yaml.Node, origin: str) -> None:
    """Refuse a node graph that expands past MAX_VALUES, nests past MAX_DEPTH or loops.

    Aliases share nodes, so sizes are memoised per node: the walk costs the document's length,
    not its expansion."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > MAX_DEPTH:
            raise YamlError(f"{origin}: nested more than {MAX_DEPTH} levels deep")
        if key in open_nodes:
            raise YamlError(f"{origin}: an alias refers to a value that contains it (a loop)")
        total = 1
        if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
            open_nodes.add(key)
            children = (
                node.value
                if isinstance(node, yaml.SequenceNode)
                else (child for pair in node.value for child in pair)
            )
            for child in children:
                total += size(child, depth + 1)
                if total > MAX_VALUES:
                    raise YamlError(
                        f"{origin}: expands to more than {MAX_VALUES:,} values through its "
                        "aliases (*name); write the values out, or use fewer aliases"
                    )
            open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema, and each key at most once in a
    mapping (PyYAML keeps the last silently: a layer setting would vanish unnoticed)."""

    yaml_implicit_resolvers = {}  # noqa: RUF012  (filled below; not the base class's 1.1 rules)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice", key_node.start_mark
                    )
                seen.add(key)
            except TypeError:  # an unhashable key: the base class says so
                break
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = str(self.construct_scalar(node))
        if value.startswith("0o"):
            return int(value[2:], 8)
        return int(value, 16 if value.startswith("0x") else 10)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = str(self.construct_scalar(node)).lower()
        if value.endswith(".inf"):
            return float("-inf") if value.startswith("-") else float("inf")
        return float("nan") if value == ".nan" else float(value)


# The core schema of YAML 1.2 (https://yaml.org/spec/1.2.2/#1032-tag-resolution); int before
# float, since a resolver list is tried in order and `10` matches both.
for _tag, _pattern, _first in (
    ("null", r"~|null|Null|NULL|", "~nN"),
    ("bool", r"true|True|TRUE|false|False|FALSE", "tTfF"),
    ("int", r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", "-+0123456789"),
    (
        "float",
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
        r"|\.(?:nan|NaN|NAN)",
        "-+0123456789.",
    ),
    ("merge", r"<<", "<"),
):
    _Loader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}",
        re.compile(f"^(?:{_pattern})$"),
        [*_first, ""] if _tag == "null" else list(_first),
    )
_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)
