"""Official Tortoise checkpoints: find them, download them, load them strictly; write random stand-ins."""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import inspect
import json
import math
import os
import pickle
import re
import warnings
import zlib
from pathlib import Path

import torch
from torch import nn

from tutortoietts.engine import configs
from tutortoietts.errors import UserError
from tutortoietts import paths

FILES = {stem: stem + ".pth" for stem in configs.STEMS}  # the six every synthesis needs
# Loaded only when asked for (the hifi decoder): a set without them is complete for diffusion.
OPTIONAL_FILES = {stem: stem + ".pth" for stem in configs.OPTIONAL_STEMS}
ALL_FILES = {**FILES, **OPTIONAL_FILES}
CONFIG_FILE = "tortoise-config.json"
HF_REPO = "Manmay/tortoise-tts"  # where the reference's get_model_path downloads from
DOWNLOAD_HINT = "run `tutortoietts models download` (or pass --models-dir / set TORTOISE_MODELS_DIR)"
# How a checkpoint file opens: torch.save's zip archive (PyTorch >= 1.6), or the legacy format,
# which starts with a pickle's PROTO opcode. Anything else is not a checkpoint at all.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"

# File stem -> (module, class) of our network.
NETWORKS = {
    "autoregressive": ("tutortoietts.engine.gpt", "AutoregressiveModel"),
    "clvp2": ("tutortoietts.engine.clvp", "CLVP"),
    "diffusion_decoder": ("tutortoietts.engine.diffusion", "DiffusionDecoder"),
    "vocoder": ("tutortoietts.engine.vocoder", "UnivNet"),
    "rlg_auto": ("tutortoietts.engine.rlg", "RandomLatentGenerator"),
    "rlg_diffuser": ("tutortoietts.engine.rlg", "RandomLatentGenerator"),
    "hifidecoder": ("tutortoietts.engine.hifigan", "HifiganGenerator"),
}

# The official autoregressive.pth was saved by a transformers version that still stored GPT-2's
# causal-mask buffers; they are constants, not weights (the reference loads that file with
# strict=False for this reason). We accept exactly these and nothing else.
IGNORED_KEYS = {"autoregressive": re.compile(r"gpt\.h\.\d+\.attn\.(bias|masked_bias)")}
# hifidecoder.pth: api_fast.py loads it with strict=False too, but no key there needs that
# tolerance: the file is a flat state dict of exactly HifiganGenerator's keys (weight-norm
# weight_g / weight_v, cond_layer), which other loaders of the same file read with strict=True.
# A key strict=False let through missing would leave a random weight behind, so none is ignored.


# --- finding the files ----------------------------------------------------------------------


def _hf_snapshots(base: Path) -> list[Path]:
    """The Hugging Face cache layout hf_hub_download(cache_dir=base) makes, newest snapshot first."""
    snapshots = base / ("models--" + HF_REPO.replace("/", "--")) / "snapshots"
    if not snapshots.is_dir():
        return []
    return sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)


def search_folders(models_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders to look in, in order: an explicit folder alone; else $TORTOISE_MODELS_DIR, then the
    tortoise cache (paths.tortoise_models_dirs). Each base also stands for the Hugging Face cache
    snapshots inside it."""
    bases = [Path(models_dir).expanduser()] if models_dir is not None else paths.tortoise_models_dirs()
    folders = []
    for base in bases:
        for folder in [base, *_hf_snapshots(base)]:
            if folder not in folders:
                folders.append(folder)
    return folders


def find_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """The first folder that holds all six checkpoint files, each one readable (verify_checkpoints);
    a clear UserError if none does."""
    folders = search_folders(models_dir)
    best, best_missing = None, list(FILES.values())
    for folder in folders:
        missing = [name for name in FILES.values() if not (folder / name).is_file()]
        if not missing:
            verify_checkpoints(folder)  # a damaged set is an error, not a reason to try the next folder
            return folder
        if len(missing) < len(best_missing):
            best, best_missing = folder, missing
    where = f" (in {best}, which has the others)" if best is not None else ""
    hint = DOWNLOAD_HINT
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        hint = (f"HF_HUB_OFFLINE is set, so run `tutortoietts models download` where there is a network, "
                f"or copy the six .pth files into {folders[0]}")
    raise UserError(
        f"Tortoise weights not found: missing {', '.join(best_missing)}{where}; searched "
        f"{', '.join(str(f) for f in folders)}; {hint}"
    )


def verify_checkpoints(folder: Path) -> None:
    """Open every checkpoint as loading will, before a render plans anything.

    A truncated download, a file that is not a checkpoint or one that carries pickled code then
    stops the run with one line before the job folder is touched, not once the engine loads.
    Cheap: the tensors are memory-mapped, not read, and each file is judged once per size and
    modification time. The config file is read too, for the same reason.
    """
    for name in FILES.values():
        path = Path(folder) / name
        info = path.stat()
        _verified(str(path), info.st_size, info.st_mtime_ns)
    read_config(folder)


@functools.lru_cache(maxsize=64)
def _verified(path: str, size: int, mtime_ns: int) -> bool:
    load_state_dict_file(path)  # raises a UserError; failures are not memoised
    return True


def require_optional(folder, stem: str) -> Path:
    """The path of an optional network's file (OPTIONAL_FILES) beside the six, checked like them;
    a one-line UserError when it is missing or unreadable. Called only when that network is asked for."""
    path = Path(folder) / OPTIONAL_FILES[stem]
    if not path.is_file():
        raise UserError(
            f"{path.name} not found in {Path(folder)}: the hifi decoder (decoder = \"hifi\", presets realtime and "
            f"fast_hifi) needs it, the diffusion presets do not; run `tutortoietts models download`"
        )
    info = path.stat()
    _verified(str(path), info.st_size, info.st_mtime_ns)
    return path


def optional_fingerprint(folder, stem: str) -> str:
    """weights_fingerprint of one optional file with the config: what its stage's cache keys hold,
    so that adding or replacing it leaves the six files' keys (the autoregressive tier) alone."""
    return weights_fingerprint(folder, [OPTIONAL_FILES[stem], CONFIG_FILE])


# --- config and state dicts -----------------------------------------------------------------


def network_class(stem: str) -> type[nn.Module]:
    module_name, class_name = NETWORKS[stem]
    return getattr(importlib.import_module(module_name), class_name)


def read_config(models_dir: str | os.PathLike) -> dict[str, dict]:
    """Constructor keywords per network: the official ones, with tortoise-config.json's laid over them."""
    path = Path(models_dir) / CONFIG_FILE
    if not path.is_file():
        return configs.resolve()  # the official files come without one
    try:
        overrides = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise UserError(f"{path} must map each network ({', '.join(configs.STEMS)}) to its keyword arguments")
    try:
        config = configs.resolve(overrides)
    except ValueError as error:
        raise UserError(f"{path}: {error}") from None
    for stem, kwargs in overrides.items():
        _check_keywords(stem, kwargs, path)
    return config


def _check_keywords(stem: str, kwargs: dict, path: Path) -> None:
    try:
        parameters = inspect.signature(network_class(stem).__init__).parameters
    except ImportError:
        return  # that network's module is not there yet; its constructor will judge
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = [name for name in parameters if name != "self"]
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"{path}: unknown keyword {key!r} for {stem}{hint}")


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, CPU, without running pickled code; vocoder.pth's generator part.

    weights_only=True is what keeps code out: torch's restricted unpickler accepts tensors and
    plain containers and refuses any other global (os.system, a class's __reduce__) before it is called.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(len(ZIP_MAGIC))
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist; {DOWNLOAD_HINT}") from None
    except OSError as error:
        raise UserError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if not head.startswith((ZIP_MAGIC, PICKLE_PROTO)):
        what = "it is empty" if not head else f"it is not a PyTorch file (it starts with {head!r})"
        raise UserError(f"{path} cannot be read as a checkpoint: {what}; delete it and {DOWNLOAD_HINT}")
    try:
        # torch warns on stderr about pickle protocols it does not expect; the refusal below says enough.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                # Memory-mapped: the tensors are paged in as they are copied to the device, not read twice.
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as error:  # truncated download, pickled code refused...
        raise _unreadable(path, error) from None
    if isinstance(state, dict) and "model_g" in state:  # the vocoder's training checkpoint: keep the generator
        state = state["model_g"]
    if not isinstance(state, dict):
        raise UserError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return state


def _unreadable(path: Path, error: Exception) -> UserError:
    """torch's reasons run to paragraphs; one line that says what is wrong with the file and what to do."""
    text = " ".join(str(error).split())
    code = re.search(r"GLOBAL (\S+)", text)
    if code:
        return UserError(
            f"{path} was refused: it carries pickled code ({code.group(1)}) that loading would run, and a "
            f"checkpoint needs none; nothing was run. Delete it and {DOWNLOAD_HINT}"
        )
    if isinstance(error, EOFError) or "central directory" in text:
        reason = "it is truncated (an interrupted download?)"
    elif isinstance(error, pickle.UnpicklingError):
        detail = re.search(r"Unsupported \w+ \S+", text)
        reason = "it holds pickled data the safe loader refuses, not only tensors" + (f" ({detail.group(0)})" if detail else "")
    else:
        reason = f"{type(error).__name__}: {text.split('. ')[0][:200]}"
    return UserError(f"{path} cannot be read as a checkpoint: {reason}; delete it and {DOWNLOAD_HINT}")


def _describe(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dict(stem: str, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    """Strict key and shape check with one readable error line (torch's own is pages long)."""
    ignored = IGNORED_KEYS.get(stem)
    found_keys = [k for k in found if not (ignored and ignored.fullmatch(k))]
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found_keys if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing key {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected key {_describe(unexpected)}")
    mismatched = [
        f"{k} is {tuple(found[k].shape)}, expected {tuple(expected[k].shape)}"
        for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        problems.append("shape mismatch: " + _describe(mismatched, 2))
    if problems:
        raise UserError(
            f"{ALL_FILES[stem]}: {' / '.join(problems)} (is this an official Tortoise checkpoint? "
            f"does {CONFIG_FILE} match?)"
        )


def build_network(stem: str, config: dict[str, dict], device="meta") -> nn.Module:
    """Our network for `stem`, constructed with the config's keywords (on 'meta': no memory, no init)."""
    with torch.device(device):
        return network_class(stem)(**config[stem])


def converted_copy(path: Path, dtype: torch.dtype) -> Path:
    """Where a dtype-converted copy of checkpoint `path` lives (keyed on its path, size and mtime)."""
    info = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{info.st_size}|{info.st_mtime_ns}".encode()).hexdigest()[:16]
    return paths.cache_dir() / "weights" / f"{path.stem}-{str(dtype).removeprefix('torch.')}-{key}.pth"


def _save_converted(net: nn.Module, target: Path) -> None:
    """Write the cast weights for the next load; a failure (read-only or full disk) only costs speed."""
    temporary = target.with_suffix(".tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), temporary)
        os.replace(temporary, target)
    except OSError:
        temporary.unlink(missing_ok=True)


def load_network(stem: str, models_dir, config: dict[str, dict] | None = None, device="cpu",
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """Construct our class for `stem` and load its checkpoint strictly; eval mode, on device, in dtype.

    On the CPU in a reduced precision the first load also writes a cast copy of the weights to the
    cache folder; later loads memory-map that copy and use its pages as the parameters. Casting
    the fp32 file instead holds both versions at once: 2.5 GB at the peak for the autoregressive
    model in bf16, against 0.85 GB.
    """
    models_dir = Path(models_dir)
    config = read_config(models_dir) if config is None else config
    path = models_dir / ALL_FILES[stem]
    copy = converted_copy(path, dtype) if torch.device(device).type == "cpu" and dtype != torch.float32 else None
    if copy is not None and copy.exists():
        net = _load_strictly(stem, config, load_state_dict_file(copy))
        return net.to(device=device, dtype=dtype)
    net = _load_strictly(stem, config, load_state_dict_file(path)).to(device=device, dtype=dtype)
    if copy is not None:
        _save_converted(net, copy)
    return net


def _load_strictly(stem: str, config: dict[str, dict], state: dict[str, torch.Tensor]) -> nn.Module:
    """Our network for `stem` with `state` as its weights (keys and shapes checked first), eval mode, no grad."""
    net = build_network(stem, config, "meta")  # skip random init: every weight comes from the file
    check_state_dict(stem, net.state_dict(), state)
    ignored = IGNORED_KEYS.get(stem)
    state = {k: v for k, v in state.items() if not (ignored and ignored.fullmatch(k))}
    net.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in [*net.parameters(), *net.buffers()]):
        # A buffer computed in __init__ and not saved stayed on 'meta': build for real instead.
        net = build_network(stem, config, "cpu")
        net.load_state_dict(state, strict=True)
    net.eval()
    net.requires_grad_(False)
    return net


# --- random stand-ins -----------------------------------------------------------------------


def _random_tensor(name: str, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A plausible random value for one state-dict entry, so random networks give finite, varied outputs."""
    shape = tuple(like.shape)
    if not like.dtype.is_floating_point:
        return torch.zeros(shape, dtype=like.dtype)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "inv_freq":  # rotary frequencies are constants: 1 / 10000^(2i / dim)
        dim = 2 * shape[0]
        return 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    noise = torch.randn(shape, generator=generator)
    if leaf == "weight_g":  # weight-norm magnitudes: unit rows keep each layer's output scale ~1
        return 1.0 + 0.1 * noise
    if len(shape) <= 1:
        # Norm scales near 1, biases and scalars near 0.
        # ("g" is CLVP's RMSNorm scale: near 0 it would silence every branch of a random CLVP.)
        return 1.0 + 0.1 * noise if leaf in ("weight", "g") else 0.02 * noise
    fan_in = math.prod(shape[1:])
    return noise / math.sqrt(fan_in)


def _legacy_gpt2_buffers(config: dict) -> dict[str, torch.Tensor]:
    """The causal-mask buffers the official autoregressive.pth carries (see IGNORED_KEYS)."""
    kw = config["autoregressive"]
    positions = (kw["max_mel_tokens"] + 2 + kw["max_conditioning_inputs"]) + (kw["max_text_tokens"] + 2)
    mask = torch.ones(positions, positions, dtype=torch.bool).tril().view(1, 1, positions, positions)
    extra = {}
    for layer in range(kw["layers"]):
        extra[f"gpt.h.{layer}.attn.bias"] = mask
        extra[f"gpt.h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    return extra


def random_state_dict(stem: str, config: dict[str, dict], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with exactly the keys and shapes of the official `stem` checkpoint."""
    shapes = build_network(stem, config, "meta").state_dict()
    # One generator per file, seeded from (seed, stem): a file's weights do not depend on the others.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(stem.encode()))
    state = {name: _random_tensor(name, like, generator) for name, like in shapes.items()}
    if stem == "autoregressive":
        state.update(_legacy_gpt2_buffers(config))
    return state


def write_random_checkpoints(models_dir, config: str | dict = "tiny", seed: int = 0) -> Path:
    """All seven files (the six and hifidecoder.pth) in the official format, random weights, plus
    tortoise-config.json. -> the folder"""
    if isinstance(config, str):
        if config not in configs.NAMED:
            raise UserError(f"unknown config {config!r}: expected one of {', '.join(configs.NAMED)}")
        overrides = configs.NAMED[config]
    else:
        overrides = config
    resolved = configs.resolve(overrides)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    for stem, filename in ALL_FILES.items():
        state = random_state_dict(stem, resolved, seed)
        payload = {"model_g": state} if stem == "vocoder" else state  # vocoder.pth is a training checkpoint
        torch.save(payload, models_dir / filename)
        del state, payload
    (models_dir / CONFIG_FILE).write_text(json.dumps(overrides, indent=2) + "\n")
    # What these files are, for every report made with them (weights_origin).
    _write_origin(models_dir, {"origin": "random", "config": config if isinstance(config, str) else "custom",
                               "seed": seed, "fingerprint": weights_fingerprint(models_dir)})
    return models_dir


# --- fingerprint and download -----------------------------------------------------------------


def _file_digest(path: Path, size: int) -> str:
    chunk = 1 << 20
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        digest.update(file.read(chunk))
        if size > chunk:
            file.seek(max(chunk, size - chunk))
            digest.update(file.read(chunk))
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _fingerprint(folder: str, stats: tuple) -> str:
    digest = hashlib.sha256()
    for name, size, _mtime in stats:
        path = Path(folder) / name
        digest.update(f"{name}:{size}:".encode())
        digest.update((_file_digest(path, size) if size >= 0 else "absent").encode())
    return digest.hexdigest()[:16]


def weights_fingerprint(models_dir, names=None) -> str:
    """A cheap, stable id of the weights (sizes and the first and last MiB of each file, plus the config).

    Recomputed only when a file's size or modification time changes (the memo is keyed on them),
    so cache keys can call it freely. The folder's path is not hashed: copied weights keep their caches.
    `names`: other files than the six and the config (optional_fingerprint).
    """
    folder = Path(models_dir).resolve()
    stats = []
    for name in names or [*FILES.values(), CONFIG_FILE]:
        try:
            info = (folder / name).stat()
            stats.append((name, info.st_size, info.st_mtime_ns))
        except FileNotFoundError:
            stats.append((name, -1, 0))
    return _fingerprint(str(folder), tuple(stats))


def download(models_dir=None) -> Path:
    """Fetch the six files and hifidecoder.pth from Hugging Face into models_dir (resumes partial
    downloads, shows progress)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import logging as hf_logging

    # Its retry warnings would bury our one-line error (progress bars still show).
    hf_logging.set_verbosity_error()

    target = Path(models_dir).expanduser() if models_dir is not None else paths.tortoise_models_dir()
    target.mkdir(parents=True, exist_ok=True)
    verified: dict[str, str | None] = {}  # file -> the hub's sha256 it matched (None: the hub gave none)
    for filename in ALL_FILES.values():
        try:
            path = Path(hf_hub_download(repo_id=HF_REPO, filename=filename, local_dir=target))
            expected = hub_sha256(filename)
        except Exception as error:  # offline, DNS, HTTP errors, disk full: all end the same way for the user
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(
                f"could not download {filename} from huggingface.co/{HF_REPO} into {target}: {reason} "
                f"(check the network connection, or copy the six .pth files there yourself)"
            ) from None
        # The hub checks only the size; torch.load would take flipped bytes inside a tensor as weights.
        actual = file_sha256(path)
        if expected is not None and actual != expected:
            path.unlink()
            raise UserError(f"{filename} arrived damaged (sha256 {actual[:12]}..., the hub says {expected[:12]}...) and "
                            f"was deleted; run `tutortoietts models download` again")
        verified[filename] = expected
    _write_origin(target, {"origin": "official", "repo": HF_REPO, "sha256": verified})
    return target


def hub_sha256(filename: str) -> str | None:
    """The sha256 the hub publishes for a large (LFS) file: its etag. None if it publishes none."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    etag = (get_hf_file_metadata(hf_hub_url(HF_REPO, filename)).etag or "").strip('"')
    return etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# --- what the weights are: official or random -----------------------------------------------------

ORIGIN_FILE = "weights-origin.json"  # written beside the checkpoints by init-random and download


def _write_origin(folder: Path, record: dict) -> None:
    (Path(folder) / ORIGIN_FILE).write_text(json.dumps(record, indent=2) + "\n")


@functools.lru_cache(maxsize=64)
def _sha256_memo(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def weights_origin(models_dir) -> dict:
    """Which weights a report ran on: {"kind": "random" | "official" | "unverified", "detail", "fingerprint", "sha256"}.

    random: written by `models init-random` (its record's fingerprint still matches the files,
    or, if the files changed since, still random-derived). official: every checkpoint's sha256
    equals the Hugging Face hub's, as recorded when `models download` verified it. unverified:
    anything else (copied in by hand, say); the sha256 of each file is listed so a reader can
    compare it with the hub's. Hashing reads every file once (seconds for 3 GB), then is memoised.
    """
    folder = Path(models_dir)
    fingerprint = weights_fingerprint(folder)
    record = {}
    path = folder / ORIGIN_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = {}
    if record.get("origin") == "random":
        changed = record.get("fingerprint") != fingerprint
        detail = f"random weights from `models init-random` (config {record.get('config')}, seed {record.get('seed')})"
        if changed:
            detail += ", changed since they were written"
        return {"kind": "random", "detail": detail, "fingerprint": fingerprint, "sha256": None}
    hashes = {}
    for name in FILES.values():
        file = folder / name
        info = file.stat()
        hashes[name] = _sha256_memo(str(file.resolve()), info.st_size, info.st_mtime_ns)
    expected = (record.get("sha256") or {}) if record.get("origin") == "official" else {}
    if expected and all(expected.get(name) == digest for name, digest in hashes.items()):
        return {"kind": "official", "detail": f"official weights: sha256 of each file equals the {HF_REPO} hub's",
                "fingerprint": fingerprint, "sha256": hashes}
    return {"kind": "unverified", "detail": "not written by init-random and not verified against the hub's sha256 "
            "(compare the sha256 listed with huggingface.co/" + HF_REPO + ")", "fingerprint": fingerprint, "sha256": hashes}
