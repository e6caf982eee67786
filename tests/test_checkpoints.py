"""Checkpoint files: official format of the random writer, strict loading, lookup, download errors."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from tutortoietts.engine import checkpoints, configs
from tutortoietts.engine.checkpoints import FILES
from tutortoietts.errors import UserError


def reference_class(stem: str):
    from tortoise.models.autoregressive import UnifiedVoice
    from tortoise.models.clvp import CLVP
    from tortoise.models.diffusion_decoder import DiffusionTts
    from tortoise.models.random_latent_generator import RandomLatentConverter
    from tortoise.models.vocoder import UnivNetGenerator

    return {
        "autoregressive": UnifiedVoice, "clvp2": CLVP, "diffusion_decoder": DiffusionTts,
        "vocoder": UnivNetGenerator, "rlg_auto": RandomLatentConverter, "rlg_diffuser": RandomLatentConverter,
    }[stem]


def reference_shapes(stem: str, config: dict) -> dict[str, tuple]:
    with torch.device("meta"):
        net = reference_class(stem)(**config[stem])
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


@pytest.mark.full
@pytest.mark.parametrize("stem", configs.STEMS)
def test_full_keys_and_shapes_equal_reference(stem):
    config = configs.resolve()
    ours = {k: tuple(v.shape) for k, v in checkpoints.build_network(stem, config, "meta").state_dict().items()}
    theirs = reference_shapes(stem, config)
    print(f"{stem}: {len(ours)} tensors, {sum(torch.Size(s).numel() for s in ours.values()) / 1e6:.1f} M values")
    assert list(ours) == list(theirs) or set(ours) == set(theirs)
    assert ours == theirs


@pytest.mark.parametrize("stem", configs.STEMS)
def test_reference_loads_tiny_random_files_strictly(stem, tiny_models_dir):
    config = checkpoints.read_config(tiny_models_dir)
    assert config == configs.resolve(configs.TINY)
    state = torch.load(tiny_models_dir / FILES[stem], map_location="cpu", weights_only=True)
    if stem == "vocoder":
        assert set(state) == {"model_g"}
        state = state["model_g"]
        assert any(k.endswith("weight_g") for k in state) and any(k.endswith("weight_v") for k in state)
    if stem == "autoregressive":
        # Like the official file: GPT-2's legacy causal-mask buffers ride along, nothing else extra.
        legacy = [k for k in state if checkpoints.IGNORED_KEYS[stem].fullmatch(k)]
        assert len(legacy) == 2 * configs.TINY["autoregressive"]["layers"]
        state = {k: v for k, v in state.items() if k not in legacy}
    net = reference_class(stem)(**config[stem])
    net.load_state_dict(state, strict=True)
    floats = torch.cat([v.flatten().float() for v in state.values() if v.is_floating_point()])
    print(f"{stem}: {len(state)} tensors, std {floats.std():.3f}, max|w| {floats.abs().max():.3f}")
    assert torch.isfinite(floats).all() and floats.std() > 0.01


@pytest.mark.parametrize("stem", configs.STEMS)
def test_our_loader_reads_tiny_files(stem, tiny_models_dir):
    net = checkpoints.load_network(stem, tiny_models_dir)
    state = checkpoints.load_state_dict_file(tiny_models_dir / FILES[stem])
    ours = net.state_dict()
    assert not net.training
    for key, value in ours.items():
        assert torch.equal(value, state[key]), key


def test_random_writer_is_seeded(tmp_path):
    config = configs.resolve(configs.TINY)
    a = checkpoints.random_state_dict("rlg_auto", config, seed=0)
    b = checkpoints.random_state_dict("rlg_auto", config, seed=0)
    c = checkpoints.random_state_dict("rlg_auto", config, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.fixture
def rlg_copy(tiny_models_dir, tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(tiny_models_dir, folder)
    return folder


def _rewrite(folder, stem, edit):
    state = torch.load(folder / FILES[stem], weights_only=True)
    edit(state)
    torch.save(state, folder / FILES[stem])


def test_missing_key_message(rlg_copy):
    removed = []
    _rewrite(rlg_copy, "rlg_auto", lambda s: removed.append(next(iter(s))) or s.pop(removed[0]))
    with pytest.raises(UserError) as caught:
        checkpoints.load_network("rlg_auto", rlg_copy)
    print(caught.value)
    assert f"rlg_auto.pth: missing key {removed[0]}" in str(caught.value)
    assert "is this an official Tortoise checkpoint? does tortoise-config.json match?" in str(caught.value)


def test_unexpected_key_message(rlg_copy):
    _rewrite(rlg_copy, "rlg_auto", lambda s: s.update({"layers.99.weight": torch.zeros(1)}))
    with pytest.raises(UserError, match=r"rlg_auto\.pth: unexpected key layers\.99\.weight") as caught:
        checkpoints.load_network("rlg_auto", rlg_copy)
    print(caught.value)


def test_shape_mismatch_message(rlg_copy):
    config = json.loads((rlg_copy / "tortoise-config.json").read_text())
    config["rlg_auto"]["channels"] = 32
    (rlg_copy / "tortoise-config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="rlg_auto.pth: shape mismatch") as caught:
        checkpoints.load_network("rlg_auto", rlg_copy)
    print(caught.value)


def test_corrupt_file_message(rlg_copy):
    (rlg_copy / "rlg_auto.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="rlg_auto.pth cannot be read as a checkpoint"):
        checkpoints.load_network("rlg_auto", rlg_copy)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"autoregresive": {}}', "unknown network 'autoregresive'"),
        ('{"rlg_auto": {"chanels": 8}}', "did you mean channels?"),
        ('["x"]', "must map each network"),
    ],
)
def test_bad_config_file(tmp_path, content, message):
    (tmp_path / "tortoise-config.json").write_text(content)
    with pytest.raises(UserError, match=message):
        checkpoints.read_config(tmp_path)


def test_no_config_file_means_official(tmp_path):
    assert checkpoints.read_config(tmp_path) == configs.FULL


def _fake_set(folder):
    # Empty state dicts: real checkpoint files (find_models_dir opens them), no weights to write.
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        torch.save({}, folder / name)
    return folder


@pytest.fixture
def lookup(tmp_path, monkeypatch):
    from tutortoietts import paths

    monkeypatch.delenv("TORTOISE_MODELS_DIR", raising=False)
    monkeypatch.setattr(paths, "tortoise_cache_dirs", lambda: [tmp_path / "cache"])
    return tmp_path


def test_lookup_order(lookup, monkeypatch):
    default = _fake_set(lookup / "cache")
    assert checkpoints.find_models_dir() == default
    env = _fake_set(lookup / "env")
    monkeypatch.setenv("TORTOISE_MODELS_DIR", str(env))
    assert checkpoints.find_models_dir() == env
    explicit = _fake_set(lookup / "explicit")
    assert checkpoints.find_models_dir(explicit) == explicit
    # An incomplete env folder falls through to the tortoise cache.
    (env / "vocoder.pth").unlink()
    assert checkpoints.find_models_dir() == default


def test_lookup_hugging_face_cache_layout(lookup):
    snapshot = _fake_set(lookup / "cache" / "models--Manmay--tortoise-tts" / "snapshots" / "0123abcd")
    assert checkpoints.find_models_dir() == snapshot


def test_missing_file_message(lookup):
    partial = _fake_set(lookup / "explicit")
    (partial / "clvp2.pth").unlink()
    with pytest.raises(UserError) as caught:
        checkpoints.find_models_dir(partial)
    message = str(caught.value)
    print(message)
    assert "clvp2.pth" in message and str(partial) in message and "tutortoietts models download" in message
    assert "autoregressive.pth" not in message
    with pytest.raises(UserError, match="autoregressive.pth, clvp2.pth"):
        checkpoints.find_models_dir()


def test_download_offline_is_user_error(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(UserError) as caught:
        checkpoints.download(tmp_path)
    print(caught.value)
    assert "autoregressive.pth" in str(caught.value) and "name resolution" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_download_calls_hub_per_file(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fetch(**kw):
        calls.append(kw)
        path = kw["local_dir"] / kw["filename"]
        path.write_bytes(kw["filename"].encode())
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch)
    monkeypatch.setattr(checkpoints, "hub_sha256", lambda name: hashlib.sha256(name.encode()).hexdigest())
    checkpoints.download(tmp_path)
    assert [c["filename"] for c in calls] == list(checkpoints.ALL_FILES.values())  # the six, then hifidecoder.pth
    assert all(c["repo_id"] == "Manmay/tortoise-tts" and c["local_dir"] == tmp_path for c in calls)


def test_download_with_damaged_bytes_is_refused_and_deleted(tmp_path, monkeypatch):
    import huggingface_hub

    def fetch(**kw):
        path = kw["local_dir"] / kw["filename"]
        path.write_bytes(b"flipped" if kw["filename"] == "diffusion_decoder.pth" else kw["filename"].encode())
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch)
    monkeypatch.setattr(checkpoints, "hub_sha256", lambda name: hashlib.sha256(name.encode()).hexdigest())
    with pytest.raises(UserError, match="diffusion_decoder.pth arrived damaged") as caught:
        checkpoints.download(tmp_path)
    assert "models download" in str(caught.value) and not (tmp_path / "diffusion_decoder.pth").exists()
    assert (tmp_path / "autoregressive.pth").exists()  # the good ones stay


def test_fingerprint(rlg_copy, tiny_models_dir):
    first = checkpoints.weights_fingerprint(rlg_copy)
    assert first == checkpoints.weights_fingerprint(rlg_copy) == checkpoints.weights_fingerprint(tiny_models_dir)
    _rewrite(rlg_copy, "rlg_auto", lambda s: s.update({k: v + 1 for k, v in s.items()}))
    assert checkpoints.weights_fingerprint(rlg_copy) != first


def test_cli_init_random_and_where(tmp_path):
    from tutortoietts.commands.models import app

    runner = CliRunner()
    result = runner.invoke(app, ["init-random", str(tmp_path / "m"), "--config", "tiny", "--seed", "3"])
    print(result.output)
    assert result.exit_code == 0, result.output
    assert all((tmp_path / "m" / name).is_file() for name in FILES.values())
    result = runner.invoke(app, ["where", "--models-dir", str(tmp_path / "m")])
    print(result.output)
    assert result.exit_code == 0 and "config: tiny" in result.output and "vocoder.pth" in result.output
    result = runner.invoke(app, ["where", "--models-dir", str(tmp_path / "empty")])
    assert result.exit_code != 0 and isinstance(result.exception, UserError)


@pytest.mark.parametrize("stem", ["autoregressive", "clvp2", "diffusion_decoder"])
def test_bf16_cpu_load_writes_and_then_maps_a_cast_copy(tiny_models_dir, stem):
    from tutortoietts.engine.checkpoints import converted_copy, load_network

    copy = converted_copy(tiny_models_dir / f"{stem}.pth", torch.bfloat16)
    copy.unlink(missing_ok=True)
    first = load_network(stem, tiny_models_dir, dtype=torch.bfloat16)
    assert copy.exists()
    second = load_network(stem, tiny_models_dir, dtype=torch.bfloat16)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    # fp32 never makes a copy: the file itself is memory-mapped.
    assert not converted_copy(tiny_models_dir / f"{stem}.pth", torch.float32).exists()


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_pickled_code_is_refused_not_run(rlg_copy, tmp_path):
    import pickle

    live = tmp_path / "LIVE"
    pickle.loads(pickle.dumps(_RunsCode(live)))  # the payload is real: a plain unpickle runs it
    assert live.exists()
    marker = tmp_path / "EXECUTED"
    state = torch.load(rlg_copy / "rlg_auto.pth", weights_only=True)
    state["payload"] = _RunsCode(marker)
    torch.save(state, rlg_copy / "rlg_auto.pth")
    with pytest.raises(UserError) as caught:
        checkpoints.load_state_dict_file(rlg_copy / "rlg_auto.pth")
    message = str(caught.value)
    print(message)
    assert "rlg_auto.pth was refused" in message and "posix.system" in message and "\n" not in message
    assert not marker.exists()


def test_a_damaged_set_is_refused_when_found(rlg_copy):
    path = rlg_copy / "clvp2.pth"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"clvp2\.pth cannot be read as a checkpoint: it is truncated"):
        checkpoints.find_models_dir(rlg_copy)
