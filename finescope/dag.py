"""Draw the workflow: the rule graph and the job DAG of the active config.

    python -m finescope.dag --out results/dag [--configfile config/paper.yaml]

writes ``rulegraph.dot`` and ``dag.dot`` (Graphviz, from ``snakemake --rulegraph``/``--dag``),
rendered to ``rulegraph.svg`` and ``dag.svg`` when Graphviz's ``dot`` is on PATH, else converted
to ``rulegraph.mmd`` and ``dag.mmd`` (mermaid, shown by GitHub and most Markdown viewers).
Planning only: nothing runs and no network is needed. ``--configfile F`` plans F alone, as
``snakemake --configfile F --replace-workflow-config`` does.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = {"rulegraph": "--rulegraph", "dag": "--dag"}


def dot_to_mermaid(dot: str) -> str:
    """Snakemake's DOT (``N[label = "..."]`` nodes, ``A -> B`` edges) as a mermaid flowchart."""
    lines = ["flowchart TB"]
    for node, label in re.findall(r'^\s*(\d+)\[label = "((?:[^"\\]|\\.)*)"', dot, re.M):
        label = label.replace("\\n", "<br/>").replace('\\"', "#quot;")
        lines.append(f'    n{node}["{label}"]')
    for source, target in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M):
        lines.append(f"    n{source} --> n{target}")
    return "\n".join(lines) + "\n"


def write_graphs(
    out: Path,
    configfile: Path | None = None,
    snakefile: Path = ROOT / "Snakefile",
    workdir: Path | None = None,
) -> list[Path]:
    """Write the graphs into ``out`` and return the files written."""
    workdir = (Path.cwd() if workdir is None else workdir).resolve()
    if configfile is None and not (workdir / "config.yaml").exists():
        configfile = ROOT / "config.yaml"  # the embedded default, as `snakemake` in ROOT uses
    base = [
        sys.executable, "-m", "snakemake", "--snakefile", str(Path(snakefile).resolve()),
        "--directory", str(workdir),
    ]  # fmt: skip
    if configfile is not None:
        # That config alone: without --replace-workflow-config Snakemake would merge it into
        # the Snakefile's config.yaml (whose models would join, e.g., the paper grid's).
        base += ["--configfile", str(Path(configfile).resolve()), "--replace-workflow-config"]
    # Each call parses the workflow (seconds): run the two side by side.
    calls = {
        name: subprocess.Popen(
            [*base, option, "dot"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for name, option in GRAPHS.items()
    }
    out.mkdir(parents=True, exist_ok=True)
    dot = shutil.which("dot")
    written = []
    for name, process in calls.items():
        stdout, stderr = process.communicate()
        command = " ".join(process.args)
        if process.returncode != 0:
            raise SystemExit(f"{command} failed ({process.returncode}):\n{stderr}")
        # Keep the graph only: anything a Snakefile prints to stdout comes before it.
        at = stdout.find("digraph")
        if at < 0:
            raise SystemExit(f"{command} printed no graph:\n{stdout[-2000:]}")
        path = out / f"{name}.dot"
        path.write_text(stdout[at:])
        written.append(path)
        if dot:
            rendered = out / f"{name}.svg"
            subprocess.run([dot, "-Tsvg", "-o", str(rendered), str(path)], check=True)
        else:
            rendered = out / f"{name}.mmd"
            rendered.write_text(dot_to_mermaid(stdout[at:]))
        written.append(rendered)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m finescope.dag", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the graph files")
    parser.add_argument("--configfile", type=Path, help="config to plan (default: config.yaml)")
    parser.add_argument("--snakefile", type=Path, default=ROOT / "Snakefile")
    parser.add_argument(
        "--directory", type=Path, help="working directory (default: the current one)"
    )
    args = parser.parse_args(argv)
    written = write_graphs(args.out, args.configfile, args.snakefile, args.directory)
    if not shutil.which("dot"):
        print(
            "Graphviz `dot` not found: wrote DOT and mermaid (install graphviz for SVG)",
            file=sys.stderr,
        )
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
