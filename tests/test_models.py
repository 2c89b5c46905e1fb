"""Where rmboost keeps its caches, and how model names resolve (no model is loaded here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rmboost.llm.cache import cache_dir, default_cache_path
from rmboost.models import minilm_path, resolve_model


def test_one_cache_folder_for_requests_and_converted_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RMBOOST_HOME", "RMBOOST_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "rmboost"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "rmboost"
    assert default_cache_path() == tmp_path / "xdg" / "rmboost" / "llm-cache.sqlite"
    monkeypatch.setenv("RMBOOST_HOME", str(tmp_path / "home-rm"))
    assert cache_dir() == tmp_path / "home-rm"
    assert default_cache_path() == tmp_path / "home-rm" / "llm-cache.sqlite"  # the request cache moves too
    monkeypatch.setenv("RMBOOST_CACHE", str(tmp_path / "c.sqlite"))
    assert default_cache_path() == tmp_path / "c.sqlite"  # a named cache file wins
    assert cache_dir() == tmp_path / "home-rm"


def test_model_names_resolve_or_fail_clearly(tmp_path: Path) -> None:
    assert resolve_model("minilm") == str(minilm_path())
    assert (minilm_path() / "config.json").is_file()
    assert resolve_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # a Hub id is passed on
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="unknown backbone 'nonsense'"):
        resolve_model("nonsense")
