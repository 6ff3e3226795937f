"""The `promptd` command's check-config, doctor and status subcommands."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, main
from tests.fake_ollama import FakeOllama
from tests.test_process import write_config


def test_check_config_valid_tree_exits_zero(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid config and valid rule files: exit 0 and an OK line."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    (tmp_path / "inbox" / "set").mkdir()
    (tmp_path / "inbox" / "set" / ".promptd.yaml").write_text("mode: quality\n")
    assert main(["check-config", "--config", str(config)]) == EXIT_OK
    assert "OK" in capsys.readouterr().out


def test_check_config_broken_rule_reports_file_line_and_key(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value deep in the tree is reported with its file, line and key; exit 2."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    rule = tmp_path / "inbox" / "a" / "b" / ".promptd.yaml"
    rule.parent.mkdir(parents=True)
    rule.write_text("language: Spanish\nmax_prompt_tokens: many\n")
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    out = capsys.readouterr().out
    assert f"{rule}:2: max_prompt_tokens" in out


def test_invalid_config_file_exits_2_with_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two mistakes in config.yaml are both reported, with their lines, and the exit code is 2."""
    config = tmp_path / "config.yaml"
    config.write_text("clip:\n  batch_size: 0\nollama:\n  retries: lots\n")
    assert main(["process", str(tmp_path), "--config", str(config)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "config.yaml:2: clip.batch_size" in err and "config.yaml:4: ollama.retries" in err


def test_doctor_everything_present_exits_zero(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    """With Ollama up, every model pulled and CLIP loadable, doctor has no FAIL line."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    assert main(["doctor", "--config", str(config)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert "version 0.12.3" in out and "gemma3:4b" in out and "loads on cpu" in out


def test_doctor_missing_pieces_say_what_to_do(
    tmp_path: Path, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing model, a non-vision vision model and missing CLIP weights each get a FAIL and a fix."""
    config = write_config(
        tmp_path,
        tmp_path / "no-clip",
        fake_ollama.url,
        ollama={"models": {"vision": "mistral:latest"}},
    )
    fake_ollama.missing.add("llama3.2:latest")
    assert main(["doctor", "--config", str(config)]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "-> ollama pull llama3.2:latest" in out
    assert "cannot see images" in out and "ollama.models.vision" in out
    assert "clip.model" in out


def test_doctor_ollama_down_says_how_to_start_it(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreachable Ollama is one FAIL line naming the host and how to start it."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    fake_ollama.down()
    assert main(["doctor", "--config", str(config)]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert fake_ollama.url in out and "ollama serve" in out


def test_status_without_a_running_service_says_so(
    tmp_path: Path, tiny_clip_dir: Path, fake_ollama: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    """`promptd status` with no service exits 1 and says it is not running."""
    config = write_config(tmp_path, tiny_clip_dir, fake_ollama.url)
    assert main(["status", "--config", str(config)]) == EXIT_FAILED
    assert "not running" in capsys.readouterr().out
