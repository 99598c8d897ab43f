"""Learner-style datasets the course did not write: scikit-learn's bundled handwritten digits in three answer styles.

Issue #27's acceptance runs notebooks 03-07 on data nobody on the project wrote, one set per answer style:

    python3 -m venv /tmp/skl && /tmp/skl/bin/pip install scikit-learn pillow
    /tmp/skl/bin/python benchmarks/own_data.py --out /tmp/owndata                 # 1,797 records per style
    /tmp/skl/bin/python benchmarks/own_data.py --out .gpu-data/digits --styles short --shifts 2 --heldout 200

writes `digits_short.jsonl` (the digit: exact match), `digits_choice.jsonl` (four shuffled options in the question, a
letter: choice accuracy), `digits_choice10.jsonl` (all ten digits as options A-J in a fixed order, a letter),
`digits_open.jsonl` (a sentence: chrF) and `images/`, InternVL's format with image paths relative
to the file. `--heldout N` keeps the last N digits (unshifted) in `digits_STYLE.heldout.jsonl` and none of their
copies in training: the GPU run's 3,194 training and 200 held-out records. Then `python -m labsupport.course run --only 03_datasets 04 05 06 07 -p DATA /tmp/owndata/digits_short.jsonl`.
scikit-learn is needed here only (it is not in the course's environments); the records are deterministic.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SCALE = 8  # 8x8 pixels drawn at 64x64, nearest-neighbour: the strokes stay as scikit-learn stores them


def _draw(pixels, path: Path, shift: int) -> None:
    """One digit (values 0-16) as a dark-on-white PNG, moved right by `shift` pixels of the 8x8 grid."""
    from PIL import Image  # noqa: PLC0415

    grid = [[0] * 8 for _ in range(8)]
    for r in range(8):
        for c in range(8):
            if 0 <= c - shift < 8:
                grid[r][c] = int(pixels[r * 8 + c - shift])
    img = Image.new("L", (8, 8))
    img.putdata([255 - round(v * 255 / 16) for row in grid for v in row])
    img.resize((8 * SCALE, 8 * SCALE), Image.NEAREST).save(path, optimize=True)


def _record(idx: int, image: str, digit: int, style: str, rng: random.Random) -> dict:
    """One InternVL-format record of `style` (short, choice or open) for the digit drawn in `image`."""
    if style == "short":
        q, a = "Which digit is written in the image? Answer with the digit only.", str(digit)
    elif style == "choice":
        options = rng.sample([d for d in range(10) if d != digit], 3) + [digit]
        rng.shuffle(options)
        letters = "ABCD"
        q = "Which digit is written in the image?\n" + "\n".join(f"{l}. {o}" for l, o in zip(letters, options))
        q += "\nAnswer with the option's letter from the given choices directly."
        a = letters[options.index(digit)]
    elif style == "choice10":   # every digit an option, always in the same order: the letter names the digit
        letters = "ABCDEFGHIJ"
        q = "Which digit is written in the image?\n" + "\n".join(f"{l}. {d}" for l, d in zip(letters, range(10)))
        q += "\nAnswer with the option's letter from the given choices directly."
        a = letters[digit]
    else:
        q, a = "Describe the handwritten digit in one sentence.", f"The image shows a handwritten {WORDS[digit]}."
    return {"id": idx, "image": image, "conversations": [{"from": "human", "value": "<image>\n" + q},
                                                           {"from": "gpt", "value": a}]}


def _write_jsonl(target: Path, rows: list[dict]) -> None:
    """Write rows as JSON lines atomically (a temporary file, then a rename)."""
    tmp = target.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(target)


def build(out: Path, styles: list[str], shifts: int, heldout: int = 0) -> dict[str, int]:
    """Write the images once and one .jsonl per style (and its held-out file); returns each file's record count."""
    from sklearn.datasets import load_digits  # noqa: PLC0415

    digits = load_digits()
    (out / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for shift in range(shifts):
        for i, (pixels, target) in enumerate(zip(digits.data, digits.target)):
            name = f"images/digit_{i:04d}_s{shift}.png"
            if not (out / name).exists():
                _draw(pixels, out / name, shift)
            items.append((name, int(target), i, shift))
    first_held = len(digits.target) - heldout
    counts = {}
    for style in styles:
        rng = random.Random(f"digits-{style}")
        rows = [(_record(n, image, digit, style, rng), i, shift) for n, (image, digit, i, shift) in enumerate(items)]
        files = {f"digits_{style}.jsonl": [r for r, i, _ in rows if i < first_held]}
        if heldout:
            files[f"digits_{style}.heldout.jsonl"] = [r for r, i, s in rows if i >= first_held and s == 0]
        for name, part in files.items():
            _write_jsonl(out / name, part)
            counts[name] = len(part)
    return counts


def main() -> None:
    """Command line: the output folder, the styles, how many shifted copies of each digit."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--styles", default="short,choice,choice10,open")
    ap.add_argument("--shifts", type=int, default=1, help="copies of each digit, moved 0..N-1 pixels right")
    ap.add_argument("--heldout", type=int, default=0, help="last N digits held out in their own file")
    args = ap.parse_args()
    counts = build(args.out, args.styles.split(","), args.shifts, args.heldout)
    for name, n in counts.items():
        print(f"{args.out / name}: {n} records")
    first = next(name for name in counts if not name.endswith(".heldout.jsonl"))
    print("then: python -m labsupport.course run --only 03_datasets 04 05 06 07 -p DATA", (args.out / first).resolve())


if __name__ == "__main__":
    main()
