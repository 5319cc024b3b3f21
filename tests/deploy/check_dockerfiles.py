"""Checks the image definitions beyond hadolint (tests/deploy/run.sh runs it).

    check_dockerfiles.py DOCKERFILE=CONTEXT [DOCKERFILE=CONTEXT ...]

For each file: every COPY/ADD source that is not from another stage exists in its build
context (and is not excluded by the context's .dockerignore); the final stage runs as a
numeric non-root user, has no HEALTHCHECK, runs `/usr/local/bin/modelgw` in exec form, and
carries the OCI labels. Across the files: the final stages agree on user, working directory,
environment, ports, entrypoint, command and label keys, so the image built FROM scratch here
is the image the canonical Dockerfile builds elsewhere.
"""

from __future__ import annotations

import fnmatch
import json
import pathlib
import shlex
import sys

OCI_LABELS = {"title", "description", "version", "revision", "created", "licenses"}


def instructions(path: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = pending + line
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def ignored(context: pathlib.Path, dockerfile: pathlib.Path) -> list[str]:
    for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"), context / ".dockerignore"):
        if candidate.exists():
            return [l.strip() for l in candidate.read_text().splitlines() if l.strip() and not l.startswith("#")]
    return []


def parse_kv(args: str) -> dict[str, str]:
    result = {}
    for token in shlex.split(args):
        key, _, value = token.partition("=")
        result[key] = value
    return result


def check(dockerfile: pathlib.Path, context: pathlib.Path, problems: list[str]) -> dict:
    where = str(dockerfile)
    stages: list[list[tuple[str, str]]] = []
    for word, args in instructions(dockerfile):
        if word == "FROM":
            stages.append([])
            image = args.split()[0]
            if image != "scratch" and "${" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
                problems.append(f"{where}: base image {image} is not pinned to a tag")
        if not stages:
            if word != "ARG":
                problems.append(f"{where}: {word} before the first FROM")
            continue
        stages[-1].append((word, args))
    if not stages:
        problems.append(f"{where}: no FROM")
        return {}
    patterns = ignored(context, dockerfile)
    for stage in stages:
        for word, args in stage:
            if word not in ("COPY", "ADD"):
                continue
            parts = shlex.split(args)
            flags = [p for p in parts if p.startswith("--")]
            paths = [p for p in parts if not p.startswith("--")]
            if any(f.startswith("--from=") for f in flags):
                continue
            if len(paths) < 2:
                problems.append(f"{where}: {word} {args}: needs a source and a destination")
                continue
            for source in paths[:-1]:
                matches = list(context.glob(source.rstrip("/"))) if source not in (".", "./") else [context]
                if not matches:
                    problems.append(f"{where}: {word} source {source!r} does not exist in the context {context}")
                for match in matches:
                    rel = match.relative_to(context).as_posix()
                    if rel != "." and any(fnmatch.fnmatch(rel, p.rstrip("/")) for p in patterns):
                        problems.append(f"{where}: {word} source {source!r} is excluded by the .dockerignore")
    final: dict[str, object] = {"ENV": {}, "LABEL": {}, "EXPOSE": set()}
    for word, args in stages[-1]:
        if word in ("ENV", "LABEL"):
            final[word].update(parse_kv(args))  # type: ignore[union-attr]
        elif word == "EXPOSE":
            final["EXPOSE"] |= set(args.split())  # type: ignore[operator]
        elif word in ("USER", "WORKDIR", "ENTRYPOINT", "CMD", "HEALTHCHECK"):
            final[word] = args
    user = str(final.get("USER", "")).split(":")[0]
    if not user.isdigit() or user == "0":
        problems.append(f"{where}: the final stage's USER is {final.get('USER')!r}, not a numeric non-root uid")
    if "HEALTHCHECK" in final and str(final["HEALTHCHECK"]).upper() != "NONE":
        problems.append(f"{where}: HEALTHCHECK in the image (Kubernetes probes decide)")
    try:
        entrypoint = json.loads(str(final.get("ENTRYPOINT", "")))
    except json.JSONDecodeError:
        entrypoint = None
    if entrypoint != ["/usr/local/bin/modelgw"]:
        problems.append(f"{where}: ENTRYPOINT is {final.get('ENTRYPOINT')!r}, not [\"/usr/local/bin/modelgw\"] in exec form")
    labels = {k.removeprefix("org.opencontainers.image.") for k in final["LABEL"] if k.startswith("org.opencontainers.image.")}  # type: ignore[union-attr]
    if OCI_LABELS - labels:
        problems.append(f"{where}: OCI labels missing: {sorted(OCI_LABELS - labels)}")
    return final


def main() -> int:
    problems: list[str] = []
    finals = []
    for item in sys.argv[1:]:
        dockerfile, _, context = item.partition("=")
        finals.append((dockerfile, check(pathlib.Path(dockerfile), pathlib.Path(context), problems)))
    if len(finals) > 1:
        base_name, base = finals[0]
        for name, other in finals[1:]:
            for key in ("USER", "WORKDIR", "ENV", "EXPOSE", "ENTRYPOINT", "CMD"):
                if base.get(key) != other.get(key):
                    problems.append(f"{name}: {key} {other.get(key)!r} differs from {base_name}'s {base.get(key)!r}")
            ours = {k for k in other.get("LABEL", {}) if k.startswith("org.opencontainers.image.")}
            theirs = {k for k in base.get("LABEL", {}) if k.startswith("org.opencontainers.image.")}
            if not ours <= theirs:
                problems.append(f"{name}: labels {sorted(ours - theirs)} are not in {base_name}")
    for line in problems:
        print(f"FAIL {line}", file=sys.stderr)
    if not problems:
        print(f"image definitions OK ({', '.join(n for n, _ in finals)}: COPY sources exist, non-root, no HEALTHCHECK, OCI labels, equivalent final stages)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
