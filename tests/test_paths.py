"""paths.py, the one resolver of user folders: TUTORTOIETTS_* first, then the XDG base directories, then ~."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tutortoietts import paths

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "TUTORTOIETTS_CACHE", "TUTORTOIETTS_PRESETS",
             "TUTORTOIETTS_VOICES", "TUTORTOIETTS_MASTERS", "TUTORTOIETTS_LEXICON", "TORTOISE_MODELS_DIR")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fake home and none of the variables set."""
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    return home


def test_defaults_without_any_variable(home):
    assert paths.cache_dir() == home / ".cache" / "tutortoietts"
    assert paths.user_presets_path() == home / ".config" / "tutortoietts" / "presets.toml"
    assert paths.user_voices_dir() == home / ".local" / "share" / "tutortoietts" / "voices"
    assert paths.user_masters_path() == home / ".config" / "tutortoietts" / "masters.toml"
    assert paths.user_lexicon_path() == home / ".config" / "tutortoietts" / "lexicon.toml"
    assert paths.bench_models_dir() == home / ".cache" / "tutortoietts" / "bench-models-full"
    assert paths.tortoise_models_dirs() == [home / ".cache" / "tortoise" / "models"]
    assert paths.tortoise_models_dir() == home / ".cache" / "tortoise" / "models"


def test_xdg_variables_are_honoured_everywhere(home, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xcache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xconfig"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdata"))
    assert paths.cache_dir() == tmp_path / "xcache" / "tutortoietts"
    assert paths.user_presets_path() == tmp_path / "xconfig" / "tutortoietts" / "presets.toml"
    assert paths.user_voices_dir() == tmp_path / "xdata" / "tutortoietts" / "voices"
    assert paths.user_masters_path() == tmp_path / "xconfig" / "tutortoietts" / "masters.toml"
    assert paths.user_lexicon_path() == tmp_path / "xconfig" / "tutortoietts" / "lexicon.toml"
    assert paths.bench_models_dir() == tmp_path / "xcache" / "tutortoietts" / "bench-models-full"
    # The tortoise cache under XDG first, then where tortoise-tts itself (which ignores XDG) puts it.
    assert paths.tortoise_models_dirs() == [tmp_path / "xcache" / "tortoise" / "models", home / ".cache" / "tortoise" / "models"]
    assert paths.tortoise_models_dir() == tmp_path / "xcache" / "tortoise" / "models"


def test_tutortoietts_variables_take_precedence(home, tmp_path, monkeypatch):
    for variable in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    monkeypatch.setenv("TUTORTOIETTS_CACHE", str(tmp_path / "my-cache"))
    monkeypatch.setenv("TUTORTOIETTS_PRESETS", str(tmp_path / "my-presets.toml"))
    monkeypatch.setenv("TUTORTOIETTS_VOICES", "~/my-voices")
    monkeypatch.setenv("TUTORTOIETTS_MASTERS", str(tmp_path / "my-masters.toml"))
    monkeypatch.setenv("TUTORTOIETTS_LEXICON", str(tmp_path / "my-lexicon.toml"))
    monkeypatch.setenv("TORTOISE_MODELS_DIR", str(tmp_path / "my-models"))
    assert paths.cache_dir() == tmp_path / "my-cache"
    assert paths.bench_models_dir() == tmp_path / "my-cache" / "bench-models-full"
    assert paths.user_presets_path() == tmp_path / "my-presets.toml"
    assert paths.user_voices_dir() == home / "my-voices"  # ~ expanded
    assert paths.user_masters_path() == tmp_path / "my-masters.toml"
    assert paths.user_lexicon_path() == tmp_path / "my-lexicon.toml"
    assert paths.tortoise_models_dirs()[0] == tmp_path / "my-models"
    assert paths.tortoise_models_dir() == tmp_path / "my-models"


@pytest.mark.parametrize("value", ["", "relative/cache"])
def test_empty_or_relative_xdg_values_are_ignored(home, monkeypatch, value):
    """The XDG spec: unset or empty means the default; a relative path is invalid and ignored."""
    monkeypatch.setenv("XDG_CACHE_HOME", value)
    monkeypatch.setenv("XDG_CONFIG_HOME", value)
    monkeypatch.setenv("XDG_DATA_HOME", value)
    assert paths.cache_dir() == home / ".cache" / "tutortoietts"
    assert paths.user_presets_path() == home / ".config" / "tutortoietts" / "presets.toml"
    assert paths.user_voices_dir() == home / ".local" / "share" / "tutortoietts" / "voices"


def test_every_user_folder_comes_from_paths(home, tmp_path, monkeypatch):
    """The modules that use these folders read them through paths.py, so they move with the variables."""
    from tutortoietts import cache, lexicon, mastering, settings, voices
    from tutortoietts.devtools import bench
    from tutortoietts.engine import checkpoints

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xcache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xconfig"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdata"))
    assert settings.user_presets_path() == tmp_path / "xconfig" / "tutortoietts" / "presets.toml"
    assert voices.user_voices_dir() == tmp_path / "xdata" / "tutortoietts" / "voices"
    assert mastering.user_masters_path() == tmp_path / "xconfig" / "tutortoietts" / "masters.toml"
    assert lexicon.user_lexicon_path() == tmp_path / "xconfig" / "tutortoietts" / "lexicon.toml"
    assert checkpoints.search_folders() == paths.tortoise_models_dirs()
    assert checkpoints.search_folders()[0] == tmp_path / "xcache" / "tortoise" / "models"
    import torch

    (tmp_path / "x.pth").write_bytes(b"")
    assert checkpoints.converted_copy(tmp_path / "x.pth", torch.bfloat16).parent == tmp_path / "xcache" / "tutortoietts" / "weights"
    # bench writes its full-size weights once; a folder that already has them is only returned.
    target = tmp_path / "xcache" / "tutortoietts" / "bench-models-full"
    target.mkdir(parents=True)
    (target / "vocoder.pth").write_bytes(b"")
    assert bench.default_models_dir() == target
    with cache.Cache() as store:
        assert store.directory == tmp_path / "xcache" / "tutortoietts"


def test_a_user_presets_file_under_xdg_config_home_is_read(home, tmp_path, monkeypatch):
    from tutortoietts.settings import load_preset

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xconfig"))
    (tmp_path / "xconfig" / "tutortoietts").mkdir(parents=True)
    (tmp_path / "xconfig" / "tutortoietts" / "presets.toml").write_text("[mine]\nbase = \"fast\"\ntop_p = 0.5\n")
    assert load_preset("mine").top_p == 0.5


def test_a_voice_under_xdg_data_home_is_found(home, tmp_path, monkeypatch):
    import numpy as np
    import soundfile

    from tutortoietts.voices import find_voice

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdata"))
    monkeypatch.setenv("TUTORTOIETTS_PROJECT_VOICES", str(tmp_path / "no-project-voices"))
    folder = tmp_path / "xdata" / "tutortoietts" / "voices" / "narrator"
    folder.mkdir(parents=True)
    soundfile.write(folder / "a.wav", np.zeros(22050, dtype=np.float32), 22050)
    voice = find_voice("narrator")
    assert voice.source == "user" and Path(voice.clips[0]).parent == folder


def _reads_environment(node) -> bool:
    """os.environ[...], os.environ.get(...) or os.getenv(...) anywhere inside `node`."""
    for inner in ast.walk(node):
        if isinstance(inner, ast.Attribute) and inner.attr in ("environ", "getenv") and isinstance(inner.value, ast.Name) \
                and inner.value.id == "os":
            return True
    return False


def test_no_other_module_resolves_a_user_folder():
    """Outside paths.py no module names an XDG variable, builds ~/.cache, ~/.config or ~/.local
    paths, or turns an environment variable into a path itself."""
    offenders = []
    for path in sorted((ROOT / "tutortoietts").rglob("*.py")):
        if path.name == "paths.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if node.value.startswith("XDG_") or node.value in (".cache", ".config", ".local"):
                    offenders.append(f"{where}: {node.value!r}")
            if isinstance(node, ast.Attribute) and node.attr == "home" and isinstance(node.value, ast.Name) and node.value.id == "Path":
                offenders.append(f"{where}: Path.home()")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Path" \
                    and any(_reads_environment(arg) for arg in node.args):
                offenders.append(f"{where}: Path(<environment variable>)")
    assert not offenders, offenders
