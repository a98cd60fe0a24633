"""The container image of `make container`: build time (no cache, then cached), image size, cold
start to /readyz and memory once ready. Writes results/container.{csv,md}; the markdown also
lists the packages in the image.

    python -m benchmarks.container [--starts 3]     (make bench-container)

The cold build makes the local base again and builds every layer anew (``--no-cache``); the
cached build follows it with a new bento of the same code, as after a code change. Each start
is a fresh container on a new volume, run as the README says (read-only, non-root); the clock
runs from ``run`` to the first 200 of /readyz.
"""

from __future__ import annotations

import argparse
import json
import statistics
import uuid
from pathlib import Path

from benchmarks.common import RESULTS, provenance, write_rows
from deploy.container import ANONYMOUS_ENV, NAME, build, image_size, running_container
from deploy.engine import find_engine
from service.launcher import free_port

TARGET_BYTES = 1.5e9
TARGET_READY_S = 30.0


def cold_starts(engine, image: str, count: int) -> list[dict]:
    rows = []
    for _ in range(count):
        volume = f"lesionseg-bench-{uuid.uuid4().hex[:8]}"
        engine.run("volume", "create", volume)
        try:
            run = running_container(engine, image, volume, free_port(), env=ANONYMOUS_ENV)
            with run as container:
                memory = engine.run(
                    "stats", "--no-stream", "--format", "{{.MemUsage}}", container.name
                ).stdout.strip()
                rows.append({"ready_s": round(container.ready_s, 1), "memory": memory})
        finally:
            engine.run("volume", "rm", "-f", volume, check=False)
    return rows


def packages(engine, image: str) -> list[dict]:
    listed = engine.run(
        "run", "--rm", "--entrypoint", "uv", image,
        "--no-cache", "pip", "list", "--format", "json",
    ).stdout  # fmt: skip
    return json.loads(listed)


def write_markdown(path: Path, rows: list[dict], installed: list[dict]) -> None:
    first = rows[0]
    starts = [r["ready_s"] for r in rows if r["measure"] == "cold_start"]
    builds = {r["measure"]: r for r in rows if r["measure"].startswith("build")}
    size = next(r for r in rows if r["measure"] == "image_size")["value"]
    lines = [
        "# Container image (`make container`)",
        "",
        f"{first['date']}, commit `{first['commit']}`, {first['cpu']} ({first['cpu_cores']} "
        f"cores, load average {first.get('load_avg_1m', '?')} at the start: the machine is "
        f"shared), {first['engine']}, bentoml {first['v_bentoml']}, base "
        f"`{first['base_image']}`. `python -m benchmarks.container` wrote this.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| image size | {size / 1e9:.2f} GB | <= {TARGET_BYTES / 1e9:.1f} GB |",
        f"| cold start to /readyz (median of {len(starts)}) | {statistics.median(starts):.1f} s "
        f"(each: {', '.join(f'{s:.1f}' for s in starts)}) | <= {TARGET_READY_S:.0f} s |",
        f"| memory once ready | {rows[-1]['memory']} | |",
        f"| build, no cache (base image made again) | {builds['build_no_cache']['value']:.0f} s "
        "| |",
        f"| build, cached (new bento, same dependencies) | {builds['build_cached']['value']:.0f} s"
        " | |",
        "",
        "The build times include `bentoml build`, `bentoml containerize` and the last stage (purge "
        "of the build tools, squash, HEALTHCHECK); the uncached one also the Debian base "
        "(debootstrap) and every download (apt, PyPI) through this machine's network, so it "
        "varies with both. A start runs a new container on a new volume, read-only, as the "
        "README says; the image's files are in the page cache (it was just built), as on a node "
        "that has run it before.",
        "",
        f"Packages in the image ({len(installed)}, `uv pip list` in /app/.venv):",
        "",
        "```",
        *(f"{p['name']}=={p['version']}" for p in sorted(installed, key=lambda p: p["name"])),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="cold starts to time")
    parser.add_argument("--out", type=Path, default=RESULTS / "container")
    args = parser.parse_args(argv)
    engine = find_engine()
    if engine is None:
        raise SystemExit("no container engine: `make container-deps`")
    common = provenance()  # at the start: the tree may change while it runs
    cold = build(NAME, no_cache=True)
    cached = build(NAME)
    common |= {"engine": engine.version(), "base_image": cached.base_image}
    rows = [
        common | {"measure": "build_no_cache", "value": round(cold.seconds, 1)},
        common | {"measure": "build_cached", "value": round(cached.seconds, 1)},
        common | {"measure": "image_size", "value": image_size(engine, cached.image)},
    ]
    for start in cold_starts(engine, cached.image, args.starts):
        rows.append(common | {"measure": "cold_start", "value": start["ready_s"], **start})
    rows = [{"ready_s": "", "memory": "", **row} for row in rows]
    write_rows(args.out.with_suffix(".csv"), rows)
    write_markdown(args.out.with_suffix(".md"), rows, packages(engine, cached.image))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
