"""Assemble ``BENCHMARKS.md`` from the per-topic reports in ``benchmarks/*.md``.

Each report is written by its own benchmark script (date, machine, exact command inside);
this script only concatenates them in a fixed order, so that no figure is typed by hand.

    python tools/update_benchmarks.py
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["speed", "patches", "localisation", "matching", "ransac", "sfm"]
HEADER = """# Benchmarks

Every figure below was produced by the command printed with it, on the machine and date given
(this project's shared 2-core CPU machines: timings are noisy, so each table compares against an
anchor measured in the same run; read ratios, not absolute milliseconds). Regenerate a section by
re-running its command, then `python tools/update_benchmarks.py`.
"""


def main() -> Path:
    reports = sorted((ROOT / "benchmarks").glob("*.md"),
                     key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    parts = [HEADER]
    for p in reports:
        text = p.read_text().strip()
        # demote the report's headings by one level under the document title
        text = "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
        parts.append(f"{text}\n\n(source: `benchmarks/{p.name}`)\n")
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n".join(parts))
    return out


if __name__ == "__main__":
    print(main())
