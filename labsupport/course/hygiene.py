"""Read an executed notebook as a learner would: count the noise its outputs hold.

    python -m labsupport.course.hygiene                       # every notebook under artifacts/executed/
    python -m labsupport.course.hygiene path/to/executed/*.ipynb

Five kinds of noise make an executed copy hard to read, and the course allows none of them (stderr: at
most MAX_STDERR_LINES lines per notebook): matplotlib's "Glyph … missing from font" warnings (a figure
with empty boxes where Chinese text belongs), ANSI escape codes (colour codes a saved copy shows as
garbage), progress bars whose last state is below 100 % (a widget saved before it finished, or a bar
interrupted), library warnings a learner cannot act on (Python's "…Warning:" lines and generate()'s notices,
also when a tool's own process prints them), and long stderr logs.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from labsupport.core.paths import artifacts_dir

MAX_STDERR_LINES = 10
GLYPH = re.compile(r"Glyph \d+ .*missing from (current )?font")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = re.compile(r"(\d{1,3})%\|")  # tqdm's "desc:  42%|████      | 21/50 [...]"
LIBRARY_WARNING = re.compile(r"\b[A-Z]\w*Warning: |The attention mask is not set|Setting `pad_token_id` to `eos_token_id`")


@dataclass
class Noise:
    """What one executed notebook's outputs hold that a learner should not have to read past."""

    notebook: str
    glyph_warnings: int = 0
    ansi_outputs: int = 0
    frozen_bars: int = 0
    library_warnings: int = 0
    stderr_lines: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when nothing breaks the course's rules for executed copies."""
        return not (self.glyph_warnings or self.ansi_outputs or self.frozen_bars or self.library_warnings) \
            and self.stderr_lines <= MAX_STDERR_LINES

    def problems(self) -> list[str]:
        """One sentence per broken rule."""
        out = []
        if self.glyph_warnings:
            out.append(f"{self.glyph_warnings} 'Glyph … missing' warnings (configure the CJK font: labsupport.core.plots)")
        if self.ansi_outputs:
            out.append(f"{self.ansi_outputs} outputs with ANSI escape codes")
        if self.frozen_bars:
            out.append(f"{self.frozen_bars} progress bars left below 100 %")
        if self.library_warnings:
            out.append(f"{self.library_warnings} library warnings a learner cannot act on (filter them, and say so once)")
        if self.stderr_lines > MAX_STDERR_LINES:
            out.append(f"{self.stderr_lines} stderr lines (at most {MAX_STDERR_LINES})")
        return out


def shown_lines(text: str) -> list[str]:
    """The lines a terminal would show for TEXT: each line keeps what follows its last carriage return."""
    lines = []
    for line in text.split("\n"):
        parts = [p for p in line.split("\r") if p.strip()]
        if parts:
            lines.append(parts[-1])
    return lines


def _texts(output: dict) -> list[tuple[str, str]]:
    """(channel, text) pairs of one cell output: stream name, 'error' or 'display'."""
    kind = output.get("output_type")
    if kind == "stream":
        text = output.get("text", "")
        return [(output.get("name", "stdout"), "".join(text) if isinstance(text, list) else text)]
    if kind == "error":
        return [("error", "\n".join(output.get("traceback", [])))]
    data = output.get("data", {})
    texts = []
    for mime in ("text/plain", "text/markdown", "text/html"):
        value = data.get(mime)
        if value is not None:
            texts.append(("display", "".join(value) if isinstance(value, list) else value))
    return texts


def inspect_notebook(path: str | Path) -> Noise:
    """Count glyph warnings, ANSI outputs, frozen progress bars, library warnings and stderr lines in an executed notebook."""
    path = Path(path)
    noise = Noise(path.stem)
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    for index, cell in enumerate(cells):
        for output in cell.get("outputs", []):
            for channel, text in _texts(output):
                lines = shown_lines(text)
                glyphs = sum(bool(GLYPH.search(line)) for line in lines)
                noise.glyph_warnings += glyphs
                if ANSI.search(text):
                    noise.ansi_outputs += 1
                    noise.examples.append(f"cell {index}: ANSI in {channel}")
                for line in lines:
                    if channel != "error" and LIBRARY_WARNING.search(line) and not GLYPH.search(line):
                        noise.library_warnings += 1
                        noise.examples.append(f"cell {index}: warning {line.strip()[:90]!r}")
                    bar = BAR.search(line)
                    if bar and int(bar.group(1)) < 100:
                        noise.frozen_bars += 1
                        noise.examples.append(f"cell {index}: bar {line.strip()[:70]!r}")
                if channel == "stderr":
                    noise.stderr_lines += len(lines)
                    if lines and len(noise.examples) < 12:
                        noise.examples.append(f"cell {index}: stderr {lines[0].strip()[:90]!r}")
    return noise


def table(results: list[Noise]) -> str:
    """A Markdown table of the counts, one row per notebook."""
    rows = ["| notebook | glyph warnings | ANSI outputs | frozen bars | library warnings | stderr lines | clean |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        rows.append(f"| {r.notebook} | {r.glyph_warnings} | {r.ansi_outputs} | {r.frozen_bars} | {r.library_warnings} | "
                    f"{r.stderr_lines} | {'yes' if r.clean else 'NO'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Print the counts for the given executed notebooks (default: ARTIFACTS/executed/*.ipynb); 1 if any is noisy."""

    args = argv if argv is not None else sys.argv[1:]
    verbose = "-v" in args
    paths = [Path(a) for a in args if not a.startswith("-")] or sorted((artifacts_dir() / "executed").glob("*.ipynb"))
    results = [inspect_notebook(p) for p in paths]
    print(table(results))
    if verbose:
        for r in results:
            for line in r.examples:
                print(f"  {r.notebook}: {line}")
    if "--json" in args:
        print(json.dumps([asdict(r) for r in results]))
    return 0 if all(r.clean for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
