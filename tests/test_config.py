"""Loading config.yaml: defaults, environment, relative paths, and problems with their lines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from daemon.config import Config, RuleSettings, default_config_path, load_config
from daemon.config.yamlfile import parse_yaml
from daemon.errors import ConfigError

SHIPPED = Path(__file__).resolve().parent.parent / "config.yaml"
COMMENTED_SETTING = re.compile(r"^(\s*)#(\w+:.*)$", re.MULTILINE)  # `#key: value`


def write(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The problems load_config reports for ``path`` (fails when it loads)."""
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {})
    return caught.value.problems


def setting_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every dotted setting path of ``model``, nested models walked."""
    paths: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        if model is Config and name == "source":
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= setting_paths(annotation, (*prefix, name))
        else:
            paths.add((*prefix, name))
    return paths


def has_path(data: Any, path: tuple[str, ...]) -> bool:
    """True when the nested mappings in ``data`` spell out ``path``."""
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


# --- defaults and environment ------------------------------------------------------------


def test_load_config_without_file_gives_defaults_relative_to_cwd(tmp_path, monkeypatch):
    """No file: model defaults, inbox under the working directory, caches under $HOME."""
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {"HOME": str(tmp_path / "home")})
    assert config.source is None
    assert config.inbox == (tmp_path.resolve() / "inbox",)
    assert config.cache_dir == tmp_path / "home" / ".cache" / "promptd"
    assert config.state_dir == config.cache_dir
    assert config.ollama.host == "http://127.0.0.1:11434"
    assert config.defaults == RuleSettings()
    assert config.clip == Config().clip


def test_load_config_empty_file_gives_defaults(tmp_path):
    """An empty or comments-only file means the defaults, with ``source`` set to it."""
    for text in ("", "# nothing here yet\n"):
        path = write(tmp_path / "config.yaml", text)
        config = load_config(path, {"HOME": str(tmp_path)})
        assert config.source == path.resolve()
        assert config.defaults == RuleSettings()
        assert config.watch == Config().watch


def test_load_config_host_unset_takes_ollama_host_from_environment(tmp_path):
    """$OLLAMA_HOST is used as given when the file leaves ``ollama.host`` out."""
    path = write(tmp_path / "config.yaml", "ollama:\n  keep_alive: 5m\n")
    config = load_config(path, {"OLLAMA_HOST": "gpu-box:11434"})
    assert config.ollama.host == "gpu-box:11434"


def test_load_config_host_in_file_wins_over_environment(tmp_path):
    """An ``ollama.host`` written in the file beats $OLLAMA_HOST."""
    path = write(tmp_path / "config.yaml", "ollama:\n  host: http://10.0.0.2:11434\n")
    config = load_config(path, {"OLLAMA_HOST": "gpu-box:11434"})
    assert config.ollama.host == "http://10.0.0.2:11434"


def test_load_config_cache_dir_follows_xdg_cache_home(tmp_path):
    """cache_dir defaults to $XDG_CACHE_HOME/promptd; a relative XDG value is ignored."""
    path = write(tmp_path / "config.yaml", "")
    xdg = tmp_path / "xdg"
    config = load_config(path, {"XDG_CACHE_HOME": str(xdg), "HOME": str(tmp_path)})
    assert config.cache_dir == xdg / "promptd"
    relative = load_config(path, {"XDG_CACHE_HOME": "rel", "HOME": str(tmp_path)})
    assert relative.cache_dir == tmp_path / ".cache" / "promptd"


# --- relative paths ----------------------------------------------------------------------


def test_load_config_relative_paths_resolve_against_the_file_folder(tmp_path, monkeypatch):
    """inbox, cache_dir, state_dir and a local clip.model are taken from config.yaml's folder."""
    monkeypatch.chdir(tmp_path)
    folder = (tmp_path / "conf").resolve()
    text = "inbox: [a, ../b, ~/pics]\ncache_dir: cache\nstate_dir: ./state\nclip:\n  model: ./models/clip\n"
    config = load_config(write(folder / "config.yaml", text), {"HOME": str(tmp_path / "home")})
    assert config.inbox == (folder / "a", tmp_path.resolve() / "b", tmp_path / "home" / "pics")
    assert config.cache_dir == folder / "cache"
    assert config.state_dir == folder / "state"
    assert config.clip.model == str(folder / "models" / "clip")


def test_load_config_clip_model_existing_relative_folder_becomes_absolute(tmp_path):
    """A clip.model naming an existing folder next to the file is a local model; hub ids stay."""
    (tmp_path / "myclip").mkdir()
    local = load_config(write(tmp_path / "a.yaml", "clip: {model: myclip}\n"), {})
    assert local.clip.model == str(tmp_path.resolve() / "myclip")
    hub = load_config(
        write(tmp_path / "b.yaml", "clip: {model: openai/clip-vit-large-patch14}\n"), {}
    )
    assert hub.clip.model == "openai/clip-vit-large-patch14"


def test_load_config_single_inbox_string_becomes_a_tuple(tmp_path):
    """``inbox: path`` and ``inbox: [path]`` mean the same."""
    config = load_config(write(tmp_path / "config.yaml", "inbox: pictures\n"), {})
    assert config.inbox == (tmp_path.resolve() / "pictures",)


# --- problems ----------------------------------------------------------------------------


def test_load_config_reports_every_problem_with_line_and_dotted_path(tmp_path):
    """All problems come at once, each as FILE:LINE: dotted.path: message."""
    path = write(
        tmp_path / "config.yaml",
        "clip:\n"
        "  batch_size: 0\n"
        "  labels:\n"
        "    top_k: many\n"
        "ollama:\n"
        "  bogus: 1\n"
        "defaults:\n"
        "  mode: fast\n",
    )
    problems = problems_of(path)
    assert len(problems) == 4
    assert problems[0].startswith(f"{path}:2: clip.batch_size: ")
    assert problems[1].startswith(f"{path}:4: clip.labels.top_k: ")
    assert problems[2].startswith(f"{path}:6: ollama.bogus: unknown key; known keys: ")
    assert "keep_alive" in problems[2]
    assert problems[3].startswith(f"{path}:8: defaults.mode: ")
    assert "'fast'" in problems[3]


def test_load_config_error_message_names_file_first_problem_and_count(tmp_path):
    """str(ConfigError) names the file, the first problem's line and how many more there are."""
    path = write(tmp_path / "config.yaml", "watch:\n  settle_s: -1\n  queue_size: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: line 2: watch.settle_s: ")
    assert str(caught.value).endswith("(and 1 more)")


def test_load_config_yaml_syntax_error_names_the_line(tmp_path):
    """Broken YAML becomes one problem FILE:LINE: YAML syntax error: ..."""
    path = write(tmp_path / "config.yaml", "log:\n  level: info\n  format: [json\nwatch: {}\n")
    (only,) = problems_of(path)
    assert re.match(rf"{re.escape(str(path))}:[34]: YAML syntax error: ", only)


def test_load_config_missing_explicit_file_raises(tmp_path):
    """A config file that was asked for but does not exist is a ConfigError, not the defaults."""
    (only,) = problems_of(tmp_path / "nope.yaml")
    assert "does not exist" in only


def test_load_config_top_level_not_a_mapping_raises(tmp_path):
    """A file holding a list (or a bare value) instead of settings is reported."""
    (only,) = problems_of(write(tmp_path / "config.yaml", "- inbox\n"))
    assert "expected a mapping" in only


def test_load_config_duplicate_key_is_a_problem(tmp_path):
    """A key written twice in one mapping is reported (YAML would silently keep the last)."""
    path = write(tmp_path / "config.yaml", "log:\n  level: info\n  level: debug\n")
    (only,) = problems_of(path)
    assert only.startswith(f"{path}:3: log.level: duplicate key (first on line 2)")


def test_load_config_missing_nested_key_points_at_its_parent_line(tmp_path):
    """A required key left out of a section is reported at the section's line."""
    path = write(tmp_path / "config.yaml", "ollama:\n  num_predict:\n    speed: 100\n")
    problems = problems_of(path)
    assert f"{path}:2: ollama.num_predict.quality: required key is missing" in problems
    assert f"{path}:2: ollama.num_predict.vision: required key is missing" in problems


def test_load_config_union_mismatch_is_one_problem(tmp_path):
    """A value that fits none of a union's types is one problem, not one per type."""
    (only,) = problems_of(write(tmp_path / "config.yaml", "ollama:\n  keep_alive: [1]\n"))
    assert ":2: ollama.keep_alive: Input should be a valid string, or a valid number" in only


def test_load_config_source_key_is_refused(tmp_path):
    """``source`` is set by the loader, so writing it in the file is a problem."""
    (only,) = problems_of(write(tmp_path / "config.yaml", "source: /etc/x.yaml\n"))
    assert ":1: source: set by promptd" in only


def test_load_config_section_with_every_key_commented_out_means_defaults(tmp_path):
    """``ollama:`` followed only by comments is an empty section, not an error."""
    config = load_config(write(tmp_path / "config.yaml", "ollama:\n  #host: x\nclip:\n"), {})
    assert config.ollama.models == Config().ollama.models
    assert config.clip.batch_size == Config().clip.batch_size


def test_load_config_deep_thinking_in_defaults_means_quality(tmp_path):
    """Seed 000's ``deep_thinking: true`` in defaults selects the quality mode."""
    config = load_config(write(tmp_path / "config.yaml", "defaults:\n  deep_thinking: true\n"), {})
    assert config.defaults.mode == "quality"


def test_load_config_bad_deep_thinking_reported_with_the_other_problems(tmp_path):
    """A non-boolean deep_thinking does not hide the other problems of its section."""
    path = write(tmp_path / "config.yaml", "defaults:\n  deep_thinking: maybe\n  naming: x\n")
    problems = problems_of(path)
    assert problems[0].startswith(f"{path}:2: defaults.deep_thinking: must be true")
    assert problems[1].startswith(f"{path}:3: defaults.naming: ")


def test_parse_yaml_records_lines_of_keys_and_list_items():
    """The line map holds mapping keys and sequence items, 1-based."""
    doc = parse_yaml("a:\n  b: 1\n  c:\n    - x\n    - y\n", "t.yaml")
    assert doc.lines[("a", "b")] == 2
    assert doc.lines[("a", "c", 1)] == 5
    assert doc.line_of(("a", "c", 1, "deeper")) == 5
    assert doc.line_of(("zzz",)) is None


# --- where the file is found -------------------------------------------------------------


def test_default_config_path_prefers_env_then_cwd_then_xdg(tmp_path, monkeypatch):
    """$PROMPTD_CONFIG, then ./config.yaml, then $XDG_CONFIG_HOME/promptd/config.yaml, else None."""
    monkeypatch.chdir(tmp_path)
    xdg = tmp_path / "xdg"
    environ = {"XDG_CONFIG_HOME": str(xdg), "HOME": str(tmp_path / "home")}
    assert default_config_path(environ) is None
    user = write(xdg / "promptd" / "config.yaml", "")
    assert default_config_path(environ) == user
    write(tmp_path / "config.yaml", "")
    assert default_config_path(environ) == Path("config.yaml")
    explicit = {**environ, "PROMPTD_CONFIG": "/somewhere/else.yaml"}
    assert default_config_path(explicit) == Path("/somewhere/else.yaml")


def test_default_config_path_without_xdg_uses_home_dot_config(tmp_path, monkeypatch):
    """Without $XDG_CONFIG_HOME the user file is ~/.config/promptd/config.yaml."""
    monkeypatch.chdir(tmp_path)
    user = write(tmp_path / "home" / ".config" / "promptd" / "config.yaml", "")
    assert default_config_path({"HOME": str(tmp_path / "home")}) == user


# --- the shipped config.yaml (drift tests) -----------------------------------------------


def test_shipped_config_loads_without_problems():
    """The repository's config.yaml is valid and sets the inbox next to it."""
    config = load_config(SHIPPED, {})
    assert config.inbox == (SHIPPED.parent / "inbox",)
    assert config.defaults.language == "Spanish"


def test_shipped_config_differs_from_the_defaults_only_where_intended():
    """Apart from the keys it sets on purpose, config.yaml repeats the model defaults."""
    data = parse_yaml(SHIPPED.read_text(encoding="utf-8"), "config.yaml").data
    shipped = Config.model_validate(data).model_dump()
    defaults = Config().model_dump()
    differing = {
        (section, key)
        for section, values in shipped.items()
        if isinstance(values, dict)
        for key in values
        if values[key] != defaults[section][key]
    } | {
        key
        for key in shipped
        if not isinstance(shipped[key], dict) and shipped[key] != defaults[key]
    }
    assert differing == {("defaults", "language")}


def test_shipped_config_documents_every_setting():
    """Every field of every model appears in config.yaml, set or as a `#key:` line."""
    text = SHIPPED.read_text(encoding="utf-8")
    uncommented = COMMENTED_SETTING.sub(r"\1\2", text)
    data = parse_yaml(uncommented, "config.yaml").data
    missing = {".".join(path) for path in setting_paths(Config) if not has_path(data, path)}
    assert missing == set()


def test_shipped_config_commented_settings_are_valid_when_enabled(tmp_path):
    """Removing the `#` from every `#key:` line still gives a valid configuration."""
    text = COMMENTED_SETTING.sub(r"\1\2", SHIPPED.read_text(encoding="utf-8"))
    assert text != SHIPPED.read_text(encoding="utf-8")
    config = load_config(write(tmp_path / "config.yaml", text), {"HOME": str(tmp_path)})
    assert config.ollama.num_ctx == 4096


def test_load_config_under_systemd_uses_its_cache_and_state_directories(tmp_path: Path) -> None:
    """$CACHE_DIRECTORY and $STATE_DIRECTORY (CacheDirectory=, StateDirectory=) fill unset folders."""
    path = tmp_path / "config.yaml"
    path.write_text("inbox: ./inbox\n", encoding="utf-8")
    environ = {
        "HOME": str(tmp_path),
        "CACHE_DIRECTORY": "/var/cache/promptd",
        "STATE_DIRECTORY": "/var/lib/promptd",
    }
    config = load_config(path, environ)
    assert config.cache_dir == Path("/var/cache/promptd")
    assert config.state_dir == Path("/var/lib/promptd")
