"""The image recipe, the locks and the Jenkinsfile, read as files (the commands they run —
make dry runs, .ci/deploy.py, the HEALTHCHECK — are in tests/e2e/test_pipeline_commands.py).

- Dockerfile: pinned base, multi-stage, runtime lock only, non-root, exec-form entry point;
  its HEALTHCHECK (and the task definition's) run here against a real HTTP server.
- Locks: requirements-runtime.lock pins exactly what requirements.lock pins, and holds every
  third-party module the worker imports (no dev tool reaches the image, none is missing).
- Jenkinsfile: every stage runs one Makefile target, run here in dry-run mode; push and
  deploy run on main in any job type; one image repository name and the template's CPU
  architecture flow from the parameter file through build, push, task and IAM; .ci/deploy.py
  rejects a bad or missing parameter file before CloudFormation sees it, and every template
  parameter is documented.

The image itself is built and run by `make test-image` (tests/image/test_image.py).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
from pathlib import Path

import pytest

from tests.harness.infra_helpers import ROOT, args_of, final_stage, instructions, stages
from worker import config


def test_base_image_pinned_and_multi_stage() -> None:
    bases = [args.split()[0] for args in args_of(instructions(), "FROM")]
    assert len(bases) >= 2
    assert len(set(bases)) == 1, "the runtime stage must use the build stage's interpreter"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", bases[0])


def stage_named(name: str) -> list[tuple[str, str]]:
    return next(s for s in stages() if s[0][1].split()[-1] == name)


def test_runtime_stage_is_small_and_hardened() -> None:
    stage = final_stage()
    runs = " ".join(args_of(stage, "RUN"))
    installed = re.findall(
        r"apt-get install -y --no-install-recommends ((?:[a-z0-9.+-]+ ?)+)", runs
    )
    # Only the codec libraries the ffmpeg build links: not Debian's ffmpeg (and its GPU/X
    # stack), no development packages.
    assert [package for group in installed for package in group.split()] == [
        "libopus0",
        "libdav1d6",
    ]
    assert "rm -rf /var/lib/apt/lists/*" in runs
    for compiler in ("gcc", "g++", "build-essential", "make ", "python3-dev", "-dev"):
        assert compiler not in runs
    # Only the virtualenv and the ffmpeg build come from the other stages; no source tree.
    assert sorted(args_of(stage, "COPY")) == [
        "--from=build /opt/venv /opt/venv",
        "--from=ffmpeg /out /opt/ffmpeg",
    ]
    assert "/opt/ffmpeg/bin" in " ".join(args_of(stage, "ENV"))
    [user] = args_of(stage, "USER")
    uid, gid = (int(part) for part in user.split(":"))
    assert uid >= 1000 and gid >= 1000
    assert json.loads(args_of(stage, "ENTRYPOINT")[0]) == ["komorebi-worker"]
    assert json.loads(args_of(stage, "CMD")[0]) == ["run"]


def test_ffmpeg_is_built_from_debian_source_without_network_or_devices() -> None:
    from worker import ffmpeg

    runs = " ".join(args_of(stage_named("ffmpeg"), "RUN"))
    assert "apt-get source --download-only --only-source ffmpeg" in runs
    configure = runs[runs.index("./configure") :]
    for flag in (
        "--disable-network",
        "--disable-autodetect",
        "--disable-everything",
        "--enable-protocol=file,pipe",
        "--enable-indev=lavfi",
        "--disable-ffplay",
    ):
        assert flag in configure, flag
    # The worker's allow-lists (SPEC §5) name nothing the build leaves out.
    # (ffmpeg names its mov and matroska demuxers after every format they read.)
    demuxers = re.search(r"--enable-demuxer='([^']+)'", configure)
    assert demuxers is not None
    aliases = {"mp4": "mov", "m4a": "mov", "3gp": "mov", "3g2": "mov", "mj2": "mov"}
    enabled = set(demuxers[1].split(","))
    for allowed in ffmpeg.FORMAT_WHITELIST.split(","):
        assert aliases.get(allowed, {"webm": "matroska"}.get(allowed, allowed)) in enabled
    assert set(ffmpeg.PROTOCOL_WHITELIST.split(",")) == {"file", "pipe"}
    # The output codecs: AAC (MP4), Opus (WebM), PNG (thumbnail).
    encoders = re.search(r"--enable-encoder='([^']+)'", configure)
    assert encoders is not None and {"aac", "libopus", "png"} <= set(encoders[1].split(","))


def test_scratch_volume_is_owned_by_the_worker() -> None:
    stage = final_stage()
    env = " ".join(args_of(stage, "ENV"))
    assert "SCRATCH_DIR=/scratch" in env
    assert f"METRICS_PORT={config.DEFAULT_METRICS_PORT}" in env
    [volume] = args_of(stage, "VOLUME")
    assert json.loads(volume) == ["/scratch"]
    user = args_of(stage, "USER")[0]
    names = [name for name, _ in stage]
    chown = next(
        i for i, (n, a) in enumerate(stage) if n == "RUN" and f"chown {user} /scratch" in a
    )
    # Docker/Fargate copy the directory's ownership into the volume only if set before VOLUME.
    assert chown < names.index("VOLUME")


def test_build_installs_only_the_runtime_lock() -> None:
    build = stages()[0]
    copies = " ".join(args_of(build, "COPY"))
    assert "requirements-runtime.lock" in copies
    assert "requirements.lock" not in copies.replace("requirements-runtime.lock", "")
    runs = " ".join(args_of(build, "RUN"))
    assert "--no-deps -r requirements-runtime.lock" in runs
    assert "--no-deps ." in runs


def test_dockerignore_admits_exactly_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # deny by default: no .venv, .git, tests or media in the context
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for args in args_of(stages()[0], "COPY"):
        copied.update(part.rstrip("/") for part in args.split()[:-1] if not part.startswith("--"))
    assert copied == admitted
    for path in copied:
        assert (ROOT / path).exists(), path


# --- locks -----------------------------------------------------------------------------------


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1].split("[")[0]).lower()] = match[2]
    return found


def test_runtime_lock_agrees_with_the_full_lock() -> None:
    runtime = pins(ROOT / "requirements-runtime.lock")
    full = pins(ROOT / "requirements.lock")
    assert runtime, "empty runtime lock"
    disagree = {n: (v, full.get(n)) for n, v in runtime.items() if full.get(n) != v}
    assert not disagree, f"runtime vs full lock: {disagree} (run `make lock`)"
    # numpy is a runtime dependency (worker/sync.py); scipy and matplotlib stay out.
    for dev_tool in ("pytest", "moto", "ruff", "mypy", "checkov", "cfn-lint", "matplotlib"):
        assert dev_tool not in runtime
    assert "scipy" not in runtime and "numpy" in runtime


def test_runtime_lock_has_every_project_dependency() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = pins(ROOT / "requirements-runtime.lock")
    for requirement in project["dependencies"]:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name).lower() in runtime, requirement


def test_every_worker_package_is_installed() -> None:
    """The image installs the worker with `pip install .` (not editable): a package of
    worker/ missing from [tool.setuptools] packages would be left out of the image."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "worker").rglob("__init__.py")
    }
    assert found == listed


# Modules that the image does not need to import: `komorebi-worker dev` runs the embedded
# AWS emulator (moto), a development tool kept out of the production image.
DEV_ONLY_MODULES = {"devenv.py"}


def module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_worker_imports_are_runtime_dependencies() -> None:
    """A third-party import outside the runtime lock would crash the image at start."""
    runtime = set(pins(ROOT / "requirements-runtime.lock"))
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    # Every module, the packages' too (worker/media/, worker/storage/, ...).
    for path in sorted((ROOT / "worker").rglob("*.py")):
        if path.name in DEV_ONLY_MODULES:
            continue
        for module in module_level_imports(path):
            if module in sys.stdlib_module_names or module in {"worker", "__future__"}:
                continue
            dists = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [])}
            if not dists & runtime:
                missing[f"{path.relative_to(ROOT)}: {module}"] = sorted(dists)
    assert not missing, f"not in requirements-runtime.lock (add to pyproject): {missing}"


def test_cli_does_not_import_dev_only_modules_at_start() -> None:
    for path in (ROOT / "worker").rglob("*.py"):
        if path.name in DEV_ONLY_MODULES:
            continue
        imported = ast.parse(path.read_text()).body
        for node in imported:
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[-1] + ".py" not in DEV_ONLY_MODULES, path.name
                for alias in node.names:
                    assert alias.name + ".py" not in DEV_ONLY_MODULES, path.name


# --- pipeline --------------------------------------------------------------------------------


def _jenkins_condition(stage: str) -> str:
    text = (ROOT / "Jenkinsfile").read_text()
    body = re.search(rf"stage\('{stage}'\)\s*\{{(.*?)\n        \}}", text, re.S)
    assert body is not None, stage
    when = re.search(r"when\s*\{\s*expression\s*\{(.*)\}\s*\}", body[1])
    assert when is not None and "branch '" not in body[1], f"{stage}: not an expression check"
    return when[1].strip()


def _evaluate(condition: str, env: dict[str, str]) -> bool:
    """The Jenkinsfile's branch condition, evaluated as Groovy would (``==~`` is a full match)."""
    parts = condition.split("||")
    result = False
    for part in parts:
        equals = re.fullmatch(r"\s*env\.(\w+)\s*==\s*'([^']*)'\s*", part)
        matches = re.fullmatch(r"\s*env\.(\w+)\s*==~\s*/(.*)/\s*", part)
        if equals:
            result |= env.get(equals[1]) == equals[2]
        elif matches:
            value = env.get(matches[1])
            result |= (
                value is not None
                and re.fullmatch(matches[2].replace("\\/", "/"), value) is not None
            )
        else:
            raise AssertionError(f"cannot read condition part {part!r}")
    return result


@pytest.mark.parametrize(
    ("job", "env", "deploys"),
    [
        ("multibranch main", {"BRANCH_NAME": "main", "GIT_BRANCH": "main"}, True),
        ("plain pipeline from SCM", {"GIT_BRANCH": "origin/main"}, True),
        ("plain pipeline, local branch", {"GIT_BRANCH": "main"}, True),
        ("multibranch feature", {"BRANCH_NAME": "feature-x", "GIT_BRANCH": "feature-x"}, False),
        ("plain pipeline, other branch", {"GIT_BRANCH": "origin/main-hotfix"}, False),
        ("plain pipeline, lookalike", {"GIT_BRANCH": "origin/not-main"}, False),
        ("no SCM information", {}, False),
    ],
)
def test_push_and_deploy_run_for_main_in_any_job_type(
    job: str, env: dict[str, str], deploys: bool
) -> None:
    for stage in ("Push to ECR", "Deploy"):
        assert _evaluate(_jenkins_condition(stage), env) is deploys, (job, stage)
