"""litefs.yml -> typed, frozen dataclasses.

Rules, in the order they apply:

* Environment expansion runs on the raw text before YAML parsing (unless disabled):
  ``$VAR`` and ``${VAR}`` (unset -> empty), ``$$`` -> ``$``, and upstream's expressions
  ``${A == 'x'}``, ``${A != "x"}``, ``${A == B}`` (bare right-hand side = another variable)
  which become ``true``/``false``. A ``${...}`` never spans lines, so line numbers survive
  unless a variable's value itself contains a newline.
* YAML keys use dashes, dataclass fields underscores. Unknown or duplicate keys, wrong types
  and bad enum values are errors. A null value (``key:`` with nothing after it, e.g. after an
  unset variable expanded to nothing) means "use the default", as in upstream's Go decoder.
* Durations are Go-style (``500ms``, ``1h30m``, ``1.5s``, ``7d``) or bare numbers of seconds,
  and must not be negative. Scalars are read from their source text, so YAML 1.1 quirks such
  as ``10:30`` being a base-60 integer do not leak into durations or strings.
* Every error is a :class:`ConfigError` reading ``file:line: dotted.key: problem``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from litefs.errors import ConfigError

__all__ = [
    "ArchiveConfig",
    "ArchiveLevel",
    "Config",
    "ConsulConfig",
    "DataConfig",
    "ExecCommand",
    "FuseConfig",
    "HTTPConfig",
    "LeaseConfig",
    "LogConfig",
    "ProxyConfig",
    "default_config",
    "expand_env",
    "find_config_path",
    "format_duration",
    "load_config",
    "parse_duration",
    "split_addr",
]

# Module-level so tests can point the search somewhere harmless.
SEARCH_PATHS: tuple[str, ...] = ("litefs.yml", "/etc/litefs.yml")

# ---------------------------------------------------------------------------------------------
# Durations

_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign, as Go accepts
    "\u03bcs": 1_000,  # Greek mu, as Go accepts
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
    "d": 86400 * 1_000_000_000,
}
# Longer units first: alternation is ordered and "m" would otherwise win over "ms".
_DURATION_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h|d)")
_BARE_NUMBER = re.compile(r"[0-9]+\.?[0-9]*|\.[0-9]+")
_DURATION_HINT = "(expected e.g. 500ms, 10s, 5m, 7d)"


def parse_duration(text: str | int | float) -> float:
    """Seconds in a Go-style duration (plus ``d``), or a bare number of seconds."""
    if isinstance(text, bool):  # bool is an int; True seconds is never meant
        raise ValueError(f'invalid duration "{text}" {_DURATION_HINT}')
    if isinstance(text, (int, float)):
        if not math.isfinite(text):
            raise ValueError(f'invalid duration "{text}" {_DURATION_HINT}')
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r} {_DURATION_HINT}")

    s = text.strip()
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if _BARE_NUMBER.fullmatch(s):
        return sign * float(s)

    # Integer nanoseconds, as Go does, so "1.1s" + "100ms" sums exactly and
    # parse_duration(format_duration(x)) round-trips.
    total_ns, pos = 0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            break
        total_ns += int(Fraction(m.group(1)) * _NS_PER_UNIT[m.group(2)])
        pos = m.end()
    if not s or pos != len(s):
        raise ValueError(f'invalid duration "{text}" {_DURATION_HINT}')
    try:
        return sign * (total_ns / 1_000_000_000)
    except OverflowError:
        raise ValueError(f'invalid duration "{text}" (too large)') from None


def format_duration(seconds: float) -> str:
    """The compact inverse of :func:`parse_duration` (``90`` -> ``1m30s``), to nanoseconds."""
    ns = round(seconds * 1_000_000_000)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < _NS_PER_UNIT["s"]:
        for unit in ("ms", "us", "ns"):
            if ns >= _NS_PER_UNIT[unit]:
                return sign + _decimal(ns, _NS_PER_UNIT[unit]) + unit
    out = []
    for unit in ("d", "h", "m"):
        whole, ns = divmod(ns, _NS_PER_UNIT[unit])
        if whole:
            out.append(f"{whole}{unit}")
    if ns:
        out.append(_decimal(ns, _NS_PER_UNIT["s"]) + "s")
    return sign + "".join(out)


def _decimal(ns: int, unit_ns: int) -> str:
    whole, frac = divmod(ns, unit_ns)
    if not frac:
        return str(whole)
    digits = len(str(unit_ns)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


# ---------------------------------------------------------------------------------------------
# Addresses


def split_addr(addr: str) -> tuple[str, int]:
    """``"host:port"`` or ``":port"`` -> ``(host, port)``; IPv6 hosts must be bracketed."""
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError(f'invalid address "{addr}" (expected host:port or :port)')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f'invalid address "{addr}" (bracket IPv6 hosts: [::1]:20202)')
    # Port 0 stays legal: tests bind ephemeral ports.
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(f'invalid port in address "{addr}" (expected 0-65535)')
    return host, int(port)


# ---------------------------------------------------------------------------------------------
# Environment expansion

_EXPAND = re.compile(r"\$(?:(\$)|\{([^}\n]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# Upstream's three expression forms (cmd/litefs/config.go); \w is ASCII there too.
_EXPR_SINGLE = re.compile(r"(\w+)\s*(==|!=)\s*'(.*)'", re.ASCII)
_EXPR_DOUBLE = re.compile(r'(\w+)\s*(==|!=)\s*"(.*)"', re.ASCII)
_EXPR_VAR = re.compile(r"(\w+)\s*(==|!=)\s*(\w+)", re.ASCII)


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``$VAR``, ``${VAR}``, ``$$`` and ``${A == 'x'}``-style expressions."""
    env = os.environ if environ is None else environ

    def replace(m: re.Match[str]) -> str:
        if m.group(1):
            return "$"
        if m.group(3) is not None:
            return env.get(m.group(3), "")
        inner = m.group(2).strip()
        for expr, rhs_is_var in ((_EXPR_SINGLE, False), (_EXPR_DOUBLE, False), (_EXPR_VAR, True)):
            e = expr.fullmatch(inner)
            if e:
                lhs = env.get(e.group(1), "")
                rhs = env.get(e.group(3), "") if rhs_is_var else e.group(3)
                return "true" if (lhs == rhs) == (e.group(2) == "==") else "false"
        # Like os.Expand: anything else in braces is looked up as a name (so usually empty).
        return env.get(inner, "")

    return _EXPAND.sub(replace, text)


# ---------------------------------------------------------------------------------------------
# The schema. Field metadata drives the loader: "kind" picks a parser other than the one the
# type hint implies, "yaml": False keeps a field out of the file.


def _dur(default: str) -> Any:
    return field(default=parse_duration(default), metadata={"kind": "duration"})


@dataclass(frozen=True)
class ExecCommand:
    cmd: str
    if_candidate: bool = False


@dataclass(frozen=True)
class FuseConfig:
    dir: Path = Path("/litefs")
    allow_other: bool = False
    debug: bool = False


@dataclass(frozen=True)
class DataConfig:
    dir: Path = Path("/var/lib/litefs")
    compress: bool = True
    retention: float = _dur("10m")
    retention_monitor_interval: float = _dur("1m")


@dataclass(frozen=True)
class HTTPConfig:
    addr: str = ":20202"
    snapshot_timeout: float = _dur("0")  # 0: use data.retention


@dataclass(frozen=True)
class ProxyConfig:
    addr: str = ""
    target: str = ""
    db: str = ""
    max_lag: float = _dur("10s")
    debug: bool = False
    passthrough: list[str] = field(default_factory=list)
    always_forward: list[str] = field(default_factory=list)
    primary_redirect_timeout: float = _dur("5s")
    read_timeout: float = _dur("0")
    read_header_timeout: float = _dur("10s")
    write_timeout: float = _dur("0")
    idle_timeout: float = _dur("30s")


@dataclass(frozen=True)
class ConsulConfig:
    url: str = ""
    key: str = ""
    ttl: float = _dur("10s")
    lock_delay: float = _dur("1s")


@dataclass(frozen=True)
class LeaseConfig:
    type: Literal["static", "consul"] = "static"
    hostname: str = ""  # "" until loaded: then the OS hostname
    advertise_url: str = ""  # "" until loaded: then http://<hostname>:<http.addr port>
    candidate: bool = True
    promote: bool = False
    reconnect_delay: float = _dur("1s")
    demote_delay: float = _dur("10s")
    databases: list[str] = field(default_factory=list)
    consul: ConsulConfig = field(default_factory=ConsulConfig)


@dataclass(frozen=True)
class ArchiveLevel:
    interval: float = field(metadata={"kind": "duration"})


def _default_levels() -> list[ArchiveLevel]:
    return [ArchiveLevel(30.0), ArchiveLevel(300.0), ArchiveLevel(3600.0)]


@dataclass(frozen=True)
class ArchiveConfig:
    type: Literal["file", "s3", "none"] = "file"
    path: str = "/var/lib/litefs-archive"
    bucket: str = ""
    prefix: str = ""
    endpoint: str = ""
    region: str = ""
    force_path_style: bool = False
    upload_interval: float = _dur("1s")
    levels: list[ArchiveLevel] = field(default_factory=_default_levels)
    snapshot_interval: float = _dur("24h")
    retention: float = _dur("7d")


@dataclass(frozen=True)
class LogConfig:
    format: Literal["text", "json"] = "text"
    timestamp: bool = False
    debug: bool = False


@dataclass(frozen=True)
class Config:
    exit_on_error: bool = True
    skip_sync: bool = False
    strict_verify: bool = False
    exec: list[ExecCommand] = field(default_factory=list, metadata={"kind": "exec"})
    fuse: FuseConfig = field(default_factory=FuseConfig)
    data: DataConfig = field(default_factory=DataConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: Path | None = field(default=None, metadata={"yaml": False})


# A scalar where one of these is expected fills the named field: "- 30s" as a level,
# "- ./migrate" as an exec entry.
_SCALAR_SHORTHAND: dict[type, str] = {ArchiveLevel: "interval", ExecCommand: "cmd"}

MAX_ARCHIVE_LEVELS = 8

# ---------------------------------------------------------------------------------------------
# Loading

_TAG = "tag:yaml.org,2002:"
_NULL, _BOOL, _STR = _TAG + "null", _TAG + "bool", _TAG + "str"


class _Loader:
    """One file's parse: its name for messages and the mark of every key seen, so checks that
    run after parsing can still point at a line."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.marks: dict[str, yaml.Mark] = {}

    def error(self, key: str, message: str, mark: yaml.Mark | None = None) -> ConfigError:
        if mark is None:
            mark = self._nearest_mark(key)
        where = f"{self.file}:{mark.line + 1}" if mark is not None else self.file
        return ConfigError(f"{where}: {key}: {message}" if key else f"{where}: {message}")

    def _nearest_mark(self, key: str) -> yaml.Mark | None:
        while key:
            if key in self.marks:
                return self.marks[key]
            key = key[: max(key.rfind("."), key.rfind("["), 0)]
        return None

    def mark_of(self, *keys: str) -> tuple[str, yaml.Mark | None]:
        """The first of ``keys`` the file spells out, with its mark; else the first key."""
        for key in keys:
            if key in self.marks:
                return key, self.marks[key]
        return keys[0], self._nearest_mark(keys[0])

    # -- values ---------------------------------------------------------------------------

    def value(self, tp: Any, meta: Mapping[str, Any], node: Node, key: str) -> Any:
        kind = meta.get("kind")
        if kind is not None:
            return _KIND_PARSERS[kind](self, node, key)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, node, key)
        origin = typing.get_origin(tp)
        if origin is list:
            (item_tp,) = typing.get_args(tp)
            return self.items(item_tp, node, key)
        if origin is Literal:
            text = self.string(node, key)
            allowed = typing.get_args(tp)
            if text not in allowed:
                raise self.error(
                    key, f'invalid value "{text}" (expected one of: {", ".join(allowed)})', node.start_mark
                )
            return text
        if tp is bool:
            return self.boolean(node, key)
        if tp is str:
            return self.string(node, key)
        if tp is Path:
            return Path(self.string(node, key))
        raise TypeError(f"config schema: no parser for {tp!r} at {key}")  # a bug here, not input

    def dataclass(self, cls: type, node: Node | None, key: str) -> Any:
        if isinstance(node, ScalarNode) and node.tag != _NULL and cls in _SCALAR_SHORTHAND:
            node = MappingNode(
                "tag:yaml.org,2002:map",
                [(ScalarNode(_STR, _SCALAR_SHORTHAND[cls], node.start_mark, node.end_mark), node)],
                node.start_mark,
                node.end_mark,
            )
        if node is not None and not _is_null(node) and not isinstance(node, MappingNode):
            raise self.error(key, f"expected a mapping, got {_describe(node)}", node.start_mark)

        hints = _hints(cls)
        fields = {
            f.name.replace("_", "-"): f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)
        }
        values: dict[str, Any] = {}
        seen: dict[str, yaml.Mark] = {}
        for key_node, value_node in node.value if isinstance(node, MappingNode) else []:
            if not isinstance(key_node, ScalarNode):
                raise self.error(key, "mapping keys must be plain strings", key_node.start_mark)
            name = key_node.value
            path = f"{key}.{name}" if key else name
            if name in seen:
                raise self.error(path, f"duplicate key (first at line {seen[name].line + 1})", key_node.start_mark)
            seen[name] = key_node.start_mark
            f = fields.get(name)
            if f is None:
                raise self.error(
                    path, f"unknown key (expected one of: {', '.join(sorted(fields))})", key_node.start_mark
                )
            self.marks[path] = key_node.start_mark
            if _is_null(value_node):
                continue  # null keeps the default, as Go's decoder does
            values[f.name] = self.value(hints[f.name], f.metadata, value_node, path)

        for f in dataclasses.fields(cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.name not in values:
                mark = node.start_mark if node is not None else None
                where = f"{key}.{f.name.replace('_', '-')}" if key else f.name.replace("_", "-")
                raise self.error(where, "required", mark)
        return cls(**values)

    def items(self, item_tp: Any, node: Node, key: str) -> list[Any]:
        if not isinstance(node, SequenceNode):
            raise self.error(key, f"expected a list, got {_describe(node)}", node.start_mark)
        out = []
        for i, item in enumerate(node.value):
            path = f"{key}[{i}]"
            self.marks[path] = item.start_mark
            if _is_null(item):
                raise self.error(path, "empty list entry", item.start_mark)
            out.append(self.value(item_tp, {}, item, path))
        return out

    def boolean(self, node: Node, key: str) -> bool:
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return node.value.lower() in ("true", "yes", "on")
        raise self.error(key, f"expected a bool (true/false), got {_describe(node)}", node.start_mark)

    def string(self, node: Node, key: str) -> str:
        # Source text, so "2024" or "on" stay what was typed; only a real true/false is refused,
        # since that is almost certainly a mistake for a string key.
        if isinstance(node, ScalarNode) and not (
            node.tag == _BOOL and node.value.lower() in ("true", "false")
        ):
            return node.value
        raise self.error(key, f"expected a string, got {_describe(node)}", node.start_mark)

    def duration(self, node: Node, key: str) -> float:
        if not isinstance(node, ScalarNode) or node.tag == _BOOL:
            raise self.error(key, f"expected a duration, got {_describe(node)}", node.start_mark)
        try:
            seconds = parse_duration(node.value)
        except ValueError as e:
            raise self.error(key, str(e), node.start_mark) from None
        if seconds < 0:
            raise self.error(key, f'duration "{node.value}" must not be negative', node.start_mark)
        return seconds

    def exec_commands(self, node: Node, key: str) -> list[ExecCommand]:
        if isinstance(node, ScalarNode):
            cmd = self.string(node, key)
            commands = [ExecCommand(cmd)] if cmd.strip() else []
        else:
            commands = self.items(ExecCommand, node, key)
        for i, command in enumerate(commands):
            if not command.cmd.strip():
                raise self.error(f"{key}[{i}].cmd", "must not be empty")
        return commands


_KIND_PARSERS: dict[str, Callable[[_Loader, Node, str], Any]] = {
    "duration": _Loader.duration,
    "exec": _Loader.exec_commands,
}

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    kind = node.tag[len(_TAG):] if node.tag.startswith(_TAG) else node.tag
    kind = {"str": "string", "int": "integer", "float": "number"}.get(kind, kind)
    return f'{kind} "{node.value}"'


# ---------------------------------------------------------------------------------------------
# Cross-field checks and derived defaults


def _finish(cfg: Config, ld: _Loader) -> Config:
    fuse_dir = os.path.abspath(cfg.fuse.dir)
    if fuse_dir == os.path.abspath(cfg.data.dir):
        key, mark = ld.mark_of("fuse.dir", "data.dir")
        raise ld.error(key, f'fuse.dir and data.dir must differ (both "{cfg.fuse.dir}")', mark)
    for key, value in (("fuse.dir", cfg.fuse.dir), ("data.dir", cfg.data.dir)):
        if not str(value).strip():
            raise ld.error(key, "must not be empty")

    try:
        _, http_port = split_addr(cfg.http.addr)
    except ValueError as e:
        raise ld.error("http.addr", str(e)) from None

    p = cfg.proxy
    if p.addr:
        try:
            split_addr(p.addr)
        except ValueError as e:
            raise ld.error("proxy.addr", str(e)) from None
    if p.target:
        for key, value in (("proxy.addr", p.addr), ("proxy.db", p.db)):
            if not value:
                raise ld.error(key, "required when proxy.target is set", ld.mark_of("proxy.target")[1])

    lease = cfg.lease
    if lease.type == "consul":
        for key, value in (("lease.consul.url", lease.consul.url), ("lease.consul.key", lease.consul.key)):
            if not value:
                raise ld.error(key, 'required when lease.type is "consul"', ld.mark_of("lease.type")[1])
        _check_url(ld, "lease.consul.url", lease.consul.url)
    if lease.databases and lease.candidate:
        raise ld.error("lease.databases", "only allowed when lease.candidate is false")
    if lease.advertise_url:
        _check_url(ld, "lease.advertise-url", lease.advertise_url)

    a = cfg.archive
    if a.type == "s3" and not a.bucket:
        raise ld.error("archive.bucket", 'required when archive.type is "s3"', ld.mark_of("archive.type")[1])
    if a.type == "file" and not a.path:
        raise ld.error("archive.path", 'required when archive.type is "file"', ld.mark_of("archive.type")[1])
    if not 1 <= len(a.levels) <= MAX_ARCHIVE_LEVELS:
        raise ld.error("archive.levels", f"expected 1 to {MAX_ARCHIVE_LEVELS} levels, got {len(a.levels)}")
    previous = 0.0
    for i, level in enumerate(a.levels):
        if level.interval <= previous:
            what = "positive" if i == 0 else f"longer than level {i}'s ({format_duration(previous)})"
            raise ld.error(
                f"archive.levels[{i}].interval",
                f"interval {format_duration(level.interval)} must be {what}; "
                "level intervals must strictly increase",
            )
        previous = level.interval

    hostname = lease.hostname or socket.gethostname()
    advertise_url = lease.advertise_url or f"http://{hostname}:{http_port}"
    return dataclasses.replace(
        cfg, lease=dataclasses.replace(lease, hostname=hostname, advertise_url=advertise_url)
    )


def _check_url(ld: _Loader, key: str, url: str) -> None:
    m = re.fullmatch(r"(https?)://([^/?#]+)(.*)", url)
    if m is None:
        raise ld.error(key, f'invalid URL "{url}" (expected http://host:port or https://...)')


# ---------------------------------------------------------------------------------------------
# Entry points


def default_config() -> Config:
    """The embedded defaults: a single-node primary with a static lease and a file archive."""
    return _finish(Config(), _Loader("<defaults>"))


def find_config_path(explicit: str | None) -> Path:
    """``explicit`` if given, else the first of ./litefs.yml and /etc/litefs.yml that exists."""
    candidates = [explicit] if explicit else list(SEARCH_PATHS)
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            return path.absolute()
    if explicit:
        raise ConfigError(f"{explicit}: config file not found")
    raise ConfigError(f"no config file found (looked for {', '.join(SEARCH_PATHS)}); pass --config PATH")


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
    expand_env: bool = True,
) -> Config:
    """Read, expand, parse and validate one litefs.yml."""
    file = os.fspath(path)
    try:
        with open(file, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{file}: cannot read config: {reason}") from None
    if expand_env:
        text = _expand_env_text(text, environ)

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join(p for p in (e.context, e.problem) if p)
        raise ConfigError(f"{file}{line}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{file}: YAML syntax error: {e}") from None

    ld = _Loader(file)
    if root is not None and not _is_null(root) and not isinstance(root, MappingNode):
        raise ld.error("", f"expected a mapping at the top level, got {_describe(root)}", root.start_mark)
    cfg = ld.dataclass(Config, root, "")
    return dataclasses.replace(_finish(cfg, ld), path=Path(file))


_expand_env_text = expand_env  # load_config's keyword argument shadows the function
