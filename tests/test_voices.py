"""Voice lookup: search order, paths, random, close-name hints, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from tutortoietts.errors import UserError
from tutortoietts.voices import find_voice, list_voices, voice_fingerprint


def write_tone(path, freq=220.0, seconds=0.5, rate=22050):
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


@pytest.fixture
def voice_dirs(tmp_path, monkeypatch):
    project, user = tmp_path / "project", tmp_path / "user"
    for root, name, freq in ((project, "narrator", 200), (user, "narrator", 300), (user, "alice", 400)):
        (root / name).mkdir(parents=True)
        write_tone(root / name / "1.wav", freq)
    monkeypatch.setenv("TUTORTOIETTS_PROJECT_VOICES", str(project))
    monkeypatch.setenv("TUTORTOIETTS_VOICES", str(user))
    return project, user


def test_search_order_project_then_user_then_tortoise(voice_dirs):
    project, user = voice_dirs
    narrator = find_voice("narrator")
    assert (narrator.source, narrator.clips) == ("project", [project / "narrator" / "1.wav"])
    assert find_voice("alice").source == "user"
    emma = find_voice("emma")  # bundled with tortoise-tts
    assert emma.source == "tortoise" and len(emma.clips) == 3
    by_name = {v.name: v for v in list_voices()}
    assert by_name["narrator"].source == "project"  # shadowing: one entry per name
    assert "cond_latent_example" not in by_name  # a .pth-only folder has no clips


def test_paths_and_random(voice_dirs, tmp_path):
    folder = find_voice(str(voice_dirs[1] / "alice"))
    assert folder.source == "path" and len(folder.clips) == 1
    single = find_voice(str(voice_dirs[1] / "alice" / "1.wav"))
    assert single.source == "path" and single.clips[0].name == "1.wav"
    assert find_voice("random").source == "random"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no audio clips"):
        find_voice(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="not found"):
        find_voice(str(tmp_path / "nowhere"))


def test_unknown_voice_suggests_close_names(voice_dirs):
    with pytest.raises(UserError) as error:
        find_voice("emmma")
    message = str(error.value)
    print(message)
    assert "unknown voice 'emmma'" in message and "emma" in message and "\n" not in message


def test_fingerprint_is_over_bytes_and_seed(voice_dirs, tmp_path):
    project, user = voice_dirs
    a = voice_fingerprint(find_voice("narrator"))
    b = voice_fingerprint(find_voice(str(user / "narrator")))
    assert a != b  # different audio
    copy = tmp_path / "renamed"
    copy.mkdir()
    (copy / "x.wav").write_bytes((project / "narrator" / "1.wav").read_bytes())
    assert voice_fingerprint(find_voice(str(copy))) == a  # the bytes, not the names
    random = find_voice("random")
    assert voice_fingerprint(random, 1) != voice_fingerprint(random, 2)
    assert voice_fingerprint(random, 1) == voice_fingerprint(random, 1)


def test_a_name_is_never_a_path(voice_dirs, tmp_path, monkeypatch):
    # Joined onto the user voice folder, "../project/narrator" would reach the project's voice;
    # read as a path from the working directory (where it is not), it is simply not found.
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for text in ("../project/narrator", "x/../../project/narrator", "..\\project\\narrator"):
        with pytest.raises(UserError, match="voice path not found"):
            find_voice(text)
    assert find_voice(str(voice_dirs[1] / "alice")).source == "path"  # an explicit path still works


def test_clips_checked_before_rendering(voice_dirs, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    write_tone(folder / "a.wav", seconds=0.5)  # the minimum, exactly
    assert len(find_voice(str(folder)).clips) == 1
    write_tone(folder / "b.wav", seconds=0.2)
    with pytest.raises(UserError, match=r"b\.wav is too short \(0\.20 s\)"):
        find_voice(str(folder))
    (folder / "b.wav").write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(UserError, match=r"b\.wav cannot be read as audio"):
        find_voice(str(folder))


def test_named_folder_without_clips(voice_dirs):
    (voice_dirs[1] / "mute").mkdir()
    (voice_dirs[1] / "mute" / "notes.txt").write_text("no audio here")
    with pytest.raises(UserError, match="voice 'mute' has no audio clips"):
        find_voice("mute")
