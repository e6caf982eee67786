"""Real speech for the quality-gate tests: espeak-ng clips of varied texts, and the defects made from them."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

ESPEAK = shutil.which("espeak-ng")
RATE = 24000  # the engine's output rate: clips go through the checks as rendered chunks do
VOICE = "en-us"  # the book's voice
OTHER_VOICE = "en-us+f4"  # a voice drift: another speaker saying the same words

# Varied on purpose: lengths from 6 to 40 words, numbers, names, dialogue, questions, lists.
TEXTS = [
    "The quick brown fox jumps over the lazy dog, and then it runs away into the forest.",
    "She sells sea shells by the sea shore every morning before breakfast.",
    "It was the best of times, it was the worst of times.",
    "The committee will meet again on Tuesday to discuss the budget for next year.",
    "A small boat drifted slowly across the quiet lake as the sun went down.",
    "My grandmother kept her letters in a wooden box under the bed.",
    "Nobody expected the old clock in the hall to start ticking again.",
    "We walked along the river until the lights of the town came into view.",
    "Doctor Hughes arrived at ten past nine, carrying a black leather bag.",
    "Where have you been all this time? We were worried sick about you!",
    "The recipe calls for two cups of flour, three eggs and a pinch of salt.",
    "In 1969, two astronauts walked on the surface of the moon for the first time.",
    "He opened the window, and the cold air rushed into the little room.",
    "Please remember to lock the back door before you go to sleep tonight.",
    "The library closes at six o'clock on weekdays and at noon on Saturdays.",
    "Thunder rolled across the valley, and the first heavy drops began to fall.",
    "I don't think we should tell anyone about this, at least not yet.",
    "The train to the coast was delayed by almost forty minutes this morning.",
    "Margaret folded the map carefully and put it back into her coat pocket.",
    "Every summer the village held a fair with music, games and fresh bread.",
    "The scientist explained that the samples had to be kept at a very low temperature.",
    "Could you pass me the salt, please?",
    "After the storm, the streets were covered with branches and fallen leaves.",
    "The old man smiled, nodded slowly, and went back to reading his newspaper.",
    "Our team finished the project two weeks ahead of schedule.",
    "The children laughed as the puppy chased its own tail around the garden.",
    "He had never seen so many stars in the sky as he did that night in the desert.",
    "The museum's newest exhibit shows paintings from the early nineteenth century.",
    "Turn left at the bakery, then walk straight on until you reach the bridge.",
    "She whispered that the secret was hidden somewhere inside the lighthouse.",
    "The price of coffee has gone up by almost twenty percent since last spring.",
    "Brave knights rode out from the castle at dawn to face the dragon.",
    "The teacher asked the class to write a short story about their holidays.",
    "A gentle breeze carried the smell of roses through the open door.",
    "They spent the whole afternoon fixing the roof of the barn.",
    "The phone rang three times, and then the house was silent again.",
    "When the music stopped, everyone turned to look at the stranger by the door.",
    "The river was too deep to cross, so they followed it north for two more days.",
    "Fresh snow covered the mountains, and the road to the pass was closed.",
    "Grace counted the coins twice, but there were still only seventeen of them.",
    "The lecture began with a simple question: what makes a good neighbour?",
    "Somewhere in the distance a dog barked, and a door slammed shut.",
    "The captain ordered the crew to lower the sails and prepare for the storm.",
    "On the table lay a letter, a candle and a key that nobody recognised.",
]
# Clips that stand for the voice's reference recordings (the book's voice, other words).
VOICE_TEXTS = [
    "This is a short recording of my voice, made to show how I usually speak.",
    "I read aloud for a few minutes every day, slowly and clearly.",
    "Reference clips should be clean, without music or other speakers.",
]
DEFECTS = ("different", "cut", "silence", "loop", "noise", "clipped", "voice")
# The check each defect is meant for (the voice drift is an extra defect for the voice check).
MEANT = {"different": "asr", "cut": "truncated", "silence": "silence", "loop": "repetition", "noise": "not_speech",
         "clipped": "clipping", "voice": "voice"}


def espeak(text: str, voice: str = VOICE, speed: int = 170) -> np.ndarray:
    """espeak-ng saying `text`, at 24 kHz float32, with a faint noise floor like a real recording's."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "say.wav"
        subprocess.run([ESPEAK, "-v", voice, "-s", str(speed), "-w", str(path), text], check=True, capture_output=True)
        wave, rate = soundfile.read(path, dtype="float32")
    import torch

    from tutortoietts.engine.audio import resample

    wave = resample(torch.from_numpy(wave), rate, RATE).numpy()
    wave = 0.8 * wave / max(float(np.abs(wave).max()), 1e-6)
    floor = np.random.default_rng(len(text)).standard_normal(wave.size).astype(np.float32) * 3e-4  # about -70 dBFS
    return (wave + floor).astype(np.float32)


def _levels(wave: np.ndarray, frame: int = 240) -> np.ndarray:
    """dBFS of 10 ms frames."""
    count = len(wave) // frame
    return 10 * np.log10(np.mean(wave[: count * frame].reshape(count, frame).astype(np.float64) ** 2, axis=1) + 1e-12)


def _speech_span(wave: np.ndarray) -> tuple[int, int]:
    """Sample range from the first to the last loud frame."""
    levels = _levels(wave)
    loud = np.flatnonzero(levels > np.percentile(levels, 95) - 30)
    return int(loud[0]) * 240, int(loud[-1] + 1) * 240


def cut_mid_word(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cut inside a loud (spoken) frame in the last 15-35% of the speech: the end of a sentence lost mid-word."""
    start, end = _speech_span(wave)
    levels = _levels(wave)
    low = (start + int(0.65 * (end - start))) // 240
    high = (start + int(0.85 * (end - start))) // 240
    loud = [i for i in range(low, high) if levels[i] > np.percentile(levels, 95) - 6]
    frame = int(rng.choice(loud)) if loud else (low + high) // 2
    return wave[: frame * 240 + 120].copy()


def insert_silence(wave: np.ndarray, rng: np.random.Generator, seconds: float = 4.0) -> np.ndarray:
    """4 s of (noise-floor) silence at the quietest point of the middle third: a pause gone wrong."""
    start, end = _speech_span(wave)
    levels = _levels(wave)
    low, high = (start + (end - start) // 3) // 240, (start + 2 * (end - start) // 3) // 240
    at = (low + int(np.argmin(levels[low:high]))) * 240
    gap = rng.standard_normal(int(seconds * RATE)).astype(np.float32) * 3e-4
    return np.concatenate([wave[:at], gap, wave[at:]])


def loop_three_times(wave: np.ndarray) -> np.ndarray:
    """The sentence said three times in a row, as a model stuck in a loop says it."""
    start, end = _speech_span(wave)
    spoken = wave[start:end]
    gap = np.zeros(int(0.15 * RATE), np.float32)
    return np.concatenate([wave[:start], spoken, gap, spoken, gap, spoken, wave[end:]])


def white_noise(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noise as long and as loud as the clip."""
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
    return (rng.standard_normal(wave.size) * rms).astype(np.float32)


def overdrive(wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain of 4-10x into a hard limit at full scale."""
    return np.clip(wave * float(rng.uniform(4.0, 10.0)), -1.0, 1.0).astype(np.float32)


@dataclass
class Clip:
    kind: str  # "clean" or one of DEFECTS
    text: str  # what the chunk was meant to say
    samples: np.ndarray  # 24 kHz float32


def phones(text: str) -> int:
    from tutortoietts.qa import phone_count, spoken_words

    return phone_count(spoken_words(text))[0]


def partner(index: int) -> str:
    """Another text of nearly the same length (phones within 25%), so only the words differ."""
    own = phones(TEXTS[index])
    others = sorted((abs(phones(text) - own), j) for j, text in enumerate(TEXTS) if j != index)
    return TEXTS[others[0][1]]


def build_corpus(seed: int = 0) -> list[Clip]:
    """One clean clip per text at varied speaking rates, and each text's turn as one defect (cycling)."""
    rng = np.random.default_rng(seed)
    clips = []
    for index, text in enumerate(TEXTS):
        speed = int(rng.integers(150, 186))
        clean = espeak(text, speed=speed)
        clips.append(Clip("clean", text, clean))
        for kind in (DEFECTS[index % len(DEFECTS)], DEFECTS[(index + 3) % len(DEFECTS)]):
            if kind == "different":
                bad = espeak(partner(index), speed=speed)
            elif kind == "cut":
                bad = cut_mid_word(clean, rng)
            elif kind == "silence":
                bad = insert_silence(clean, rng)
            elif kind == "loop":
                bad = loop_three_times(clean)
            elif kind == "noise":
                bad = white_noise(clean, rng)
            elif kind == "clipped":
                bad = overdrive(clean, rng)
            else:
                bad = espeak(text, voice=OTHER_VOICE, speed=speed)
            clips.append(Clip(kind, text, bad))
    return clips


def voice_clips() -> list[np.ndarray]:
    return [espeak(text) for text in VOICE_TEXTS]
