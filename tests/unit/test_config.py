"""litefs.config: loading, defaults, env expansion, validation and error locations."""
from __future__ import annotations

import dataclasses
import socket
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from litefs import config as config_mod
from litefs.config import (
    ArchiveLevel,
    Config,
    ExecCommand,
    default_config,
    expand_env,
    find_config_path,
    format_duration,
    load_config,
    parse_duration,
    split_addr,
)
from litefs.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "litefs.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load(tmp_path: Path, text: str, **kwargs) -> Config:
    return load_config(write(tmp_path, text), **kwargs)


def load_error(tmp_path: Path, text: str, **kwargs) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, **kwargs)
    return str(exc.value)


# --- defaults and the example file -------------------------------------------------------------


def test_default_config_values():
    cfg = default_config()
    host = socket.gethostname()
    assert cfg.exit_on_error is True and cfg.skip_sync is False and cfg.strict_verify is False
    assert cfg.exec == []
    assert cfg.fuse.dir == Path("/litefs") and cfg.fuse.allow_other is False
    assert cfg.data.dir == Path("/var/lib/litefs") and cfg.data.compress is True
    assert (cfg.data.retention, cfg.data.retention_monitor_interval) == (600.0, 60.0)
    assert cfg.http.addr == ":20202" and cfg.http.snapshot_timeout == 0.0
    p = cfg.proxy
    assert (p.addr, p.target, p.db, p.passthrough, p.always_forward) == ("", "", "", [], [])
    assert (p.max_lag, p.primary_redirect_timeout) == (10.0, 5.0)
    assert (p.read_timeout, p.read_header_timeout, p.write_timeout, p.idle_timeout) == (0, 10, 0, 30)
    lease = cfg.lease
    assert lease.type == "static" and lease.candidate is True and lease.promote is False
    assert lease.hostname == host
    assert lease.advertise_url == f"http://{host}:20202"
    assert (lease.reconnect_delay, lease.demote_delay, lease.databases) == (1.0, 10.0, [])
    assert (lease.consul.url, lease.consul.key, lease.consul.ttl, lease.consul.lock_delay) == ("", "", 10.0, 1.0)
    a = cfg.archive
    assert a.type == "file" and a.path == "/var/lib/litefs-archive"
    assert (a.bucket, a.prefix, a.endpoint, a.region, a.force_path_style) == ("", "", "", "", False)
    assert a.upload_interval == 1.0
    assert a.levels == [ArchiveLevel(30.0), ArchiveLevel(300.0), ArchiveLevel(3600.0)]
    assert (a.snapshot_interval, a.retention) == (86400.0, 7 * 86400.0)
    assert (cfg.log.format, cfg.log.timestamp, cfg.log.debug) == ("text", False, False)
    assert cfg.path is None


def test_example_file_loads_to_the_defaults():
    path = REPO / "conf" / "litefs.yml"
    cfg = load_config(path, environ={})
    assert cfg.path == path
    assert dataclasses.replace(cfg, path=None) == default_config()


def test_example_file_mentions_every_key():
    text = (REPO / "conf" / "litefs.yml").read_text()

    def keys(cls: type) -> set[str]:
        out = set()
        for f in dataclasses.fields(cls):
            if f.metadata.get("yaml", True):
                out.add(f.name.replace("_", "-"))
        return out

    for cls in (Config, config_mod.FuseConfig, config_mod.DataConfig, config_mod.HTTPConfig,
                config_mod.ProxyConfig, config_mod.LeaseConfig, config_mod.ConsulConfig,
                config_mod.ArchiveConfig, config_mod.LogConfig, ExecCommand):
        for key in keys(cls):
            assert f"{key}:" in text, f"{cls.__name__}.{key} missing from conf/litefs.yml"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
def test_empty_file_is_all_defaults(tmp_path, text):
    path = write(tmp_path, text)
    cfg = load_config(path)
    assert cfg.path == path
    assert dataclasses.replace(cfg, path=None) == default_config()


def test_empty_sections_and_null_values_keep_defaults(tmp_path):
    cfg = load(tmp_path, """
        fuse:
        proxy: {}
        lease:
          hostname:
          advertise-url: ${UNSET_VAR}
    """, environ={})
    assert cfg.fuse == default_config().fuse
    assert cfg.proxy == default_config().proxy
    assert cfg.lease.hostname == socket.gethostname()


def test_values_override_defaults(tmp_path):
    cfg = load(tmp_path, """
        exit-on-error: false
        skip-sync: yes
        fuse:
          dir: /mnt/db
          allow-other: true
        data:
          dir: /data
          compress: false
          retention: 1h30m
        http:
          addr: "127.0.0.1:9999"
          snapshot-timeout: 90
        proxy:
          addr: ":8080"
          target: "localhost:8081"
          db: "app.db"
          passthrough: ["/static/*", "*.png"]
          max-lag: 1.5s
        lease:
          hostname: node-7
          candidate: false
          databases: [a.db, b.db]
        archive:
          type: s3
          bucket: "2024"
          levels:
            - interval: 10s
            - 1m
        log:
          format: json
    """)
    assert cfg.exit_on_error is False and cfg.skip_sync is True
    assert cfg.fuse.dir == Path("/mnt/db") and cfg.fuse.allow_other is True
    assert cfg.data.dir == Path("/data") and cfg.data.compress is False
    assert cfg.data.retention == 5400.0
    assert cfg.http.addr == "127.0.0.1:9999" and cfg.http.snapshot_timeout == 90.0
    assert cfg.proxy.passthrough == ["/static/*", "*.png"] and cfg.proxy.max_lag == 1.5
    assert cfg.lease.hostname == "node-7"
    assert cfg.lease.advertise_url == "http://node-7:9999"
    assert cfg.lease.databases == ["a.db", "b.db"]
    assert cfg.archive.bucket == "2024"  # source text, not the integer 2024
    assert cfg.archive.levels == [ArchiveLevel(10.0), ArchiveLevel(60.0)]
    assert cfg.log.format == "json"


def test_dataclasses_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_config().fuse.dir = Path("/x")  # type: ignore[misc]


# --- unknown keys, types, enums: key + file + line ----------------------------------------------

UNKNOWN_KEY_CASES = [
    # (yaml, dotted key, line)
    ("log:\n  debug: true\nbogus: 1\n", "bogus", 3),
    ("exec:\n  - cmd: x\n    bogus: 1\n", "exec[0].bogus", 3),
    ("fuse:\n  dir: /x\n  bogus: 1\n", "fuse.bogus", 3),
    ("data:\n\n  bogus: 1\n", "data.bogus", 3),
    ("http:\n  addr: ':1'\n  bogus: 1\n", "http.bogus", 3),
    ("proxy:\n  bogus: 1\n", "proxy.bogus", 2),
    ("lease:\n  type: static\n  bogus: 1\n", "lease.bogus", 3),
    ("lease:\n  consul:\n    ttl: 10s\n    bogus: 1\n", "lease.consul.bogus", 4),
    ("archive:\n  levels:\n    - interval: 1s\n    - interval: 2s\n      bogus: 1\n", "archive.levels[1].bogus", 5),
    ("archive:\n  type: file\n  bogus: 1\n", "archive.bogus", 3),
    ("log:\n  format: text\n\n\n  bogus: 1\n", "log.bogus", 5),
]


@pytest.mark.parametrize("text,key,line", UNKNOWN_KEY_CASES)
def test_unknown_key_names_key_file_and_line(tmp_path, text, key, line):
    path = tmp_path / "litefs.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}:{line}: {key}: unknown key (expected one of: ")


def test_unknown_key_lists_the_valid_keys(tmp_path):
    msg = load_error(tmp_path, "fuse:\n  dirr: /x\n")
    assert msg == f"{tmp_path / 'litefs.yml'}:2: fuse.dirr: unknown key (expected one of: allow-other, debug, dir)"


def test_bad_duration_message(tmp_path):
    msg = load_error(tmp_path, """
        lease:
          type: static
          consul:
            ttl: 10x
    """)
    assert msg == f'{tmp_path / "litefs.yml"}:4: lease.consul.ttl: invalid duration "10x" (expected e.g. 500ms, 10s, 5m, 7d)'


@pytest.mark.parametrize("text,key,line,fragment", [
    ("data:\n  retention: -5s\n", "data.retention", 2, 'duration "-5s" must not be negative'),
    ("data:\n  retention: 10:30\n", "data.retention", 2, 'invalid duration "10:30"'),
    ("data:\n  retention: true\n", "data.retention", 2, 'expected a duration, got bool "true"'),
    ("proxy:\n  max-lag: [1]\n", "proxy.max-lag", 2, "expected a duration, got a list"),
    ("fuse:\n  debug: maybe\n", "fuse.debug", 2, 'expected a bool (true/false), got string "maybe"'),
    ("fuse:\n  debug: 'true'\n", "fuse.debug", 2, 'expected a bool (true/false), got string "true"'),
    ("\nexit-on-error: 1\n", "exit-on-error", 2, 'expected a bool (true/false), got integer "1"'),
    ("proxy:\n  db: true\n", "proxy.db", 2, 'expected a string, got bool "true"'),
    ("proxy:\n  db: {a: 1}\n", "proxy.db", 2, "expected a string, got a mapping"),
    ("proxy:\n  passthrough: /static\n", "proxy.passthrough", 2, 'expected a list, got string "/static"'),
    ("proxy:\n  passthrough:\n    - a\n    - [b]\n", "proxy.passthrough[1]", 4, "expected a string, got a list"),
    ("proxy:\n  passthrough:\n    - a\n    -\n", "proxy.passthrough[1]", 4, "empty list entry"),
    ("fuse: /litefs\n", "fuse", 1, 'expected a mapping, got string "/litefs"'),
    ("lease:\n  consul: yes\n", "lease.consul", 2, 'expected a mapping, got bool "yes"'),
    ("lease:\n  type: etcd\n", "lease.type", 2, 'invalid value "etcd" (expected one of: static, consul)'),
    ("archive:\n  type: gcs\n", "archive.type", 2, 'invalid value "gcs" (expected one of: file, s3, none)'),
    ("log:\n  format: xml\n", "log.format", 2, 'invalid value "xml" (expected one of: text, json)'),
    ("exec:\n  - if-candidate: true\n", "exec[0].cmd", 2, "required"),
    ("exec:\n  - cmd: ''\n", "exec[0].cmd", 2, "must not be empty"),
    ("exec: {cmd: x}\n", "exec", 1, "expected a list, got a mapping"),
    ("fuse:\n  dir: /a\n  dir: /b\n", "fuse.dir", 3, "duplicate key (first at line 2)"),
    ("http:\n  addr: 'localhost'\n", "http.addr", 2, 'invalid address "localhost"'),
    ("http:\n  addr: ':99999'\n", "http.addr", 2, 'invalid port in address ":99999"'),
    ("proxy:\n  addr: ':x'\n", "proxy.addr", 2, 'invalid port in address ":x"'),
    ("lease:\n  advertise-url: node1:20202\n", "lease.advertise-url", 2, 'invalid URL "node1:20202"'),
])
def test_bad_values_name_key_file_and_line(tmp_path, text, key, line, fragment):
    path = tmp_path / "litefs.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:{line}: {key}: "), msg
    assert fragment in msg, msg


def test_top_level_must_be_a_mapping(tmp_path):
    msg = load_error(tmp_path, "- a\n- b\n")
    assert msg == f"{tmp_path / 'litefs.yml'}:1: expected a mapping at the top level, got a list"


# --- YAML syntax and files ------------------------------------------------------------------------


def test_yaml_syntax_error_has_file_and_line(tmp_path):
    msg = load_error(tmp_path, """
        fuse:
          dir: /litefs
        data:
          dir: [unclosed
        log:
          debug: true
    """)
    assert msg.startswith(f"{tmp_path / 'litefs.yml'}:")
    assert "YAML syntax error" in msg
    line = int(msg.split(":")[1])
    assert line in (4, 5)  # the flow sequence opens on line 4; PyYAML reports where it gave up


def test_yaml_bad_indentation_line(tmp_path):
    msg = load_error(tmp_path, "fuse:\n  dir: /a\n debug: true\n")
    assert msg.startswith(f"{tmp_path / 'litefs.yml'}:3: YAML syntax error")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yml")


def test_find_config_path_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    system = tmp_path / "etc" / "litefs.yml"
    monkeypatch.setattr(config_mod, "SEARCH_PATHS", ("litefs.yml", str(system)))

    with pytest.raises(ConfigError, match="no config file found"):
        find_config_path(None)

    system.parent.mkdir()
    system.write_text("")
    assert find_config_path(None) == system

    (tmp_path / "litefs.yml").write_text("")
    assert find_config_path(None) == tmp_path / "litefs.yml"

    explicit = tmp_path / "other.yml"
    explicit.write_text("")
    assert find_config_path(str(explicit)) == explicit
    assert find_config_path("other.yml") == explicit  # relative to the cwd

    with pytest.raises(ConfigError, match="missing.yml: config file not found"):
        find_config_path(str(tmp_path / "missing.yml"))


def test_default_search_paths():
    assert config_mod.SEARCH_PATHS == ("litefs.yml", "/etc/litefs.yml")


# --- environment expansion ----------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("$A", "x"),
    ("${A}", "x"),
    ("pre-${A}-post", "pre-x-post"),
    ("$A$B", "xy"),
    ("$UNSET|${UNSET}", "|"),
    ("$$", "$"),
    ("$$A", "$A"),
    ("cost: $5", "cost: $5"),
    ("trailing $", "trailing $"),
    ("${A == 'x'}", "true"),
    ("${A == 'y'}", "false"),
    ('${A != "x"}', "false"),
    ('${A != "y"}', "true"),
    ("${ A=='x' }", "true"),
    ("${A == X_TOO}", "true"),
    ("${A == B}", "false"),
    ("${A != B}", "true"),
    ("${UNSET == ''}", "true"),
    ("${UNSET == OTHER_UNSET}", "true"),
    ("${A == 'x y'}", "false"),
])
def test_expand_env(text, expected):
    env = {"A": "x", "B": "y", "X_TOO": "x"}
    assert expand_env(text, env) == expected


def test_expand_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("LITEFS_TEST_VAR", "hello")
    assert expand_env("${LITEFS_TEST_VAR}") == "hello"


def test_expansion_in_load_keeps_line_numbers(tmp_path):
    env = {"FUSE_DIR": "/mnt/x", "PRIMARY": "node-1", "HOST": "node-1", "LAG": "oops"}
    text = """
        fuse:
          dir: $FUSE_DIR
        lease:
          candidate: ${PRIMARY == HOST}
          hostname: ${HOST}
        proxy:
          db: "$$literal"
    """
    cfg = load(tmp_path, text, environ=env)
    assert cfg.fuse.dir == Path("/mnt/x")
    assert cfg.lease.candidate is True and cfg.lease.hostname == "node-1"
    assert cfg.proxy.db == "$literal"

    msg = load_error(tmp_path, textwrap.dedent(text) + "  max-lag: ${LAG}\n", environ=env)
    assert msg.startswith(f"{tmp_path / 'litefs.yml'}:8: proxy.max-lag: invalid duration \"oops\"")


def test_expansion_can_be_disabled(tmp_path):
    cfg = load(tmp_path, "proxy:\n  db: '${DB}'\n", environ={"DB": "x.db"}, expand_env=False)
    assert cfg.proxy.db == "${DB}"
    cfg = load(tmp_path, "proxy:\n  db: '${DB}'\n", environ={"DB": "x.db"})
    assert cfg.proxy.db == "x.db"


# --- exec ---------------------------------------------------------------------------------------


def test_exec_string_form(tmp_path):
    assert load(tmp_path, "exec: myapp serve --port 8081\n").exec == [ExecCommand("myapp serve --port 8081")]
    assert load(tmp_path, "exec: ''\n").exec == []


def test_exec_list_form(tmp_path):
    cfg = load(tmp_path, """
        exec:
          - cmd: "myapp migrate"
            if-candidate: true
          - cmd: "myapp serve"
          - "myapp extra"
    """)
    assert cfg.exec == [
        ExecCommand("myapp migrate", if_candidate=True),
        ExecCommand("myapp serve", if_candidate=False),
        ExecCommand("myapp extra", if_candidate=False),
    ]


# --- cross-field validation ---------------------------------------------------------------------


def test_proxy_target_requires_db_and_addr(tmp_path):
    path = tmp_path / "litefs.yml"
    msg = load_error(tmp_path, "proxy:\n  addr: ':8080'\n  target: 'localhost:8081'\n")
    assert msg == f"{path}:3: proxy.db: required when proxy.target is set"
    msg = load_error(tmp_path, "proxy:\n  target: 'localhost:8081'\n  db: app.db\n")
    assert msg == f"{path}:2: proxy.addr: required when proxy.target is set"
    cfg = load(tmp_path, "proxy:\n  addr: ':8080'\n  target: 'localhost:8081'\n  db: app.db\n")
    assert (cfg.proxy.addr, cfg.proxy.target, cfg.proxy.db) == (":8080", "localhost:8081", "app.db")


def test_consul_requires_url_and_key(tmp_path):
    path = tmp_path / "litefs.yml"
    msg = load_error(tmp_path, "lease:\n  type: consul\n")
    assert msg == f'{path}:2: lease.consul.url: required when lease.type is "consul"'
    msg = load_error(tmp_path, "lease:\n  type: consul\n  consul:\n    url: http://localhost:8500\n")
    assert msg == f'{path}:2: lease.consul.key: required when lease.type is "consul"'
    cfg = load(tmp_path, """
        lease:
          type: consul
          consul:
            url: http://localhost:8500
            key: litefs/primary
            ttl: 15s
    """)
    assert cfg.lease.type == "consul"
    assert (cfg.lease.consul.url, cfg.lease.consul.key, cfg.lease.consul.ttl) == (
        "http://localhost:8500", "litefs/primary", 15.0)


def test_lease_databases_forbidden_on_candidates(tmp_path):
    msg = load_error(tmp_path, "lease:\n  candidate: true\n  databases: [a.db]\n")
    assert msg == f"{tmp_path / 'litefs.yml'}:3: lease.databases: only allowed when lease.candidate is false"
    # The default candidate is true as well.
    assert "lease.databases" in load_error(tmp_path, "lease:\n  databases: [a.db]\n")
    assert load(tmp_path, "lease:\n  candidate: false\n  databases: [a.db]\n").lease.databases == ["a.db"]


def test_s3_requires_bucket(tmp_path):
    msg = load_error(tmp_path, "archive:\n  region: us-east-1\n  type: s3\n")
    assert msg == f'{tmp_path / "litefs.yml"}:3: archive.bucket: required when archive.type is "s3"'
    cfg = load(tmp_path, "archive:\n  type: s3\n  bucket: b\n  force-path-style: true\n")
    assert (cfg.archive.type, cfg.archive.bucket, cfg.archive.force_path_style) == ("s3", "b", True)


def test_archive_type_none(tmp_path):
    assert load(tmp_path, "archive:\n  type: none\n").archive.type == "none"


def test_levels_must_strictly_increase(tmp_path):
    msg = load_error(tmp_path, """
        archive:
          levels:
            - interval: 30s
            - interval: 5m
            - interval: 5m
    """)
    assert msg.startswith(f"{tmp_path / 'litefs.yml'}:5: archive.levels[2].interval: interval 5m must be longer")
    msg = load_error(tmp_path, "archive:\n  levels:\n    - interval: 1m\n    - interval: 30s\n")
    assert msg.startswith(f"{tmp_path / 'litefs.yml'}:4: archive.levels[1].interval: ")
    msg = load_error(tmp_path, "archive:\n  levels:\n    - interval: 0s\n")
    assert "archive.levels[0].interval: interval 0s must be positive" in msg


def test_levels_count(tmp_path):
    msg = load_error(tmp_path, "archive:\n  levels: []\n")
    assert msg == f"{tmp_path / 'litefs.yml'}:2: archive.levels: expected 1 to 8 levels, got 0"
    nine = "".join(f"    - {i + 1}s\n" for i in range(9))
    assert "expected 1 to 8 levels, got 9" in load_error(tmp_path, "archive:\n  levels:\n" + nine)
    eight = "".join(f"    - {i + 1}s\n" for i in range(8))
    assert len(load(tmp_path, "archive:\n  levels:\n" + eight).archive.levels) == 8


def test_fuse_dir_must_differ_from_data_dir(tmp_path):
    msg = load_error(tmp_path, "fuse:\n  dir: /srv/x\ndata:\n  dir: /srv/x/\n")
    assert msg == f'{tmp_path / "litefs.yml"}:2: fuse.dir: fuse.dir and data.dir must differ (both "/srv/x")'
    msg = load_error(tmp_path, "data:\n  dir: /litefs\n")
    assert msg.startswith(f"{tmp_path / 'litefs.yml'}:2: data.dir: ")


def test_advertise_url_follows_http_port(tmp_path):
    cfg = load(tmp_path, "http:\n  addr: ':7777'\nlease:\n  hostname: h1\n")
    assert cfg.lease.advertise_url == "http://h1:7777"
    cfg = load(tmp_path, "lease:\n  advertise-url: https://primary.internal:443\n")
    assert cfg.lease.advertise_url == "https://primary.internal:443"


# --- split_addr ---------------------------------------------------------------------------------


@pytest.mark.parametrize("addr,expected", [
    (":20202", ("", 20202)),
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("localhost:0", ("localhost", 0)),
    ("[::1]:8080", ("::1", 8080)),
    (":65535", ("", 65535)),
])
def test_split_addr(addr, expected):
    assert split_addr(addr) == expected


@pytest.mark.parametrize("addr", ["20202", "", ":", ":65536", "host:-1", "::1:80", "h:8o", ":１２"])
def test_split_addr_rejects(addr):
    with pytest.raises(ValueError):
        split_addr(addr)


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text,seconds", [
    ("0", 0.0),
    ("0s", 0.0),
    ("500ms", 0.5),
    ("10s", 10.0),
    ("5m", 300.0),
    ("1h", 3600.0),
    ("7d", 604800.0),
    ("1h30m", 5400.0),
    ("1.5s", 1.5),
    (".5s", 0.5),
    ("1d2h3m4s5ms", 93784.005),
    ("250us", 0.00025),
    ("250µs", 0.00025),
    ("250μs", 0.00025),
    ("100ns", 1e-07),
    ("10", 10.0),
    ("2.5", 2.5),
    (" 3s ", 3.0),
    ("-2s", -2.0),
    (7, 7.0),
    (0.25, 0.25),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, abs=0, rel=1e-15)


@pytest.mark.parametrize("text", ["", "s", "10x", "1h 30m", "ten", "1e3s", "1..5s", "5m10", "--1s",
                                  "inf", "nan", True, float("inf"), float("nan"), None, [1]])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds,text", [
    (0, "0s"), (0.5, "500ms"), (1.5, "1.5s"), (90, "1m30s"), (3600, "1h"), (604800, "7d"),
    (0.0015, "1.5ms"), (1e-9, "1ns"), (-2, "-2s"), (93784.005, "1d2h3m4.005s"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


NS_PER_UNIT = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
               "h": 3600 * 10**9, "d": 86400 * 10**9}


@given(st.integers(min_value=0, max_value=10**15))
def test_format_then_parse_round_trips(ns):
    seconds = ns / 10**9
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert round(parse_duration(text) * 1e9) == ns


@given(st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=10**6),
        st.integers(min_value=0, max_value=999),
        st.sampled_from(sorted(NS_PER_UNIT)),
    ),
    min_size=1, max_size=6,
))
def test_parse_sums_components(parts):
    text = "".join(f"{whole}.{frac:03d}{unit}" if frac else f"{whole}{unit}" for whole, frac, unit in parts)
    expected_ns = sum(int(Fraction(f"{whole}.{frac:03d}") * NS_PER_UNIT[unit]) for whole, frac, unit in parts)
    assert parse_duration(text) == expected_ns / 10**9  # int/int: correctly rounded


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_bare_numbers_are_seconds(x):
    text = f"{x:.6f}"
    assert parse_duration(text) == float(text)
    assert parse_duration(x) == x
