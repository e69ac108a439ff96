"""The deployment (docker/) checked without a Docker engine: parse compose.yaml and every Dockerfile, and check that
what they reference exists — files, services, volumes, env vars, commands, flags, pins, topics, ports.

The cluster-shaped commands are exercised locally where that needs no cluster: ``spark-submit --version`` and the
Spark standalone Master/Worker usage from the pyspark wheel (what the Spark services run), and ``flink run --help``
from the Flink environment (the flags the job submitter passes).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML parses docker/compose.yaml: add `pyyaml` to the dev extra")

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
SETUP_STREAMING = ROOT / "scripts" / "setup-streaming.sh"
VENV_BIN = Path(sys.executable).parent
FLINK_BIN = ROOT / ".venv-flink" / "lib" / "python3.11" / "site-packages" / "pyflink" / "bin" / "flink"
FLINK_PYTHON = ROOT / ".venv-flink" / "bin" / "python"
#: Where the images put the repository (WORKDIR of both Dockerfiles).
IMAGE_ROOT = "/opt/tessera"

#: `tessera` subcommands the compose file uses that other issues are adding right now. A name here that is not in
#: tessera/cli.py yet xfails; once it lands it is checked like any other. Any other unknown name fails.
PENDING_COMMANDS = {"serve", "upload", "nightly", "stream", "backfill", "train", "consistency"}


# ---- parsing ------------------------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def dockerfiles() -> list[Path]:
    return sorted(DOCKER.glob("*.Dockerfile"))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, backslash continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in dockerfile.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def args_of(dockerfile: Path) -> dict[str, str]:
    """The defaults of every ``ARG NAME=value`` in a Dockerfile."""
    found = {}
    for ins, rest in instructions(dockerfile):
        if ins == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            found[name.strip()] = value.strip().strip('"')
    return found


def copy_sources(dockerfile: Path) -> Iterator[str]:
    """The build-context paths a Dockerfile COPYs or ADDs (not ``--from`` another stage or image)."""
    for ins, rest in instructions(dockerfile):
        if ins not in ("COPY", "ADD"):
            continue
        tokens = shlex.split(rest)
        if any(t.startswith("--from") for t in tokens):
            continue
        paths = [t for t in tokens if not t.startswith("--")]
        yield from paths[:-1]


def command_strings(service: dict[str, Any]) -> list[str]:
    """A service's command line(s) as shell text (compose's ``$$`` unescaped)."""
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.append(shlex.join(str(v) for v in value))
    return [p.replace("$$", "$") for p in parts]


def full_command(service: dict[str, Any]) -> str:
    """entrypoint + command joined, then the script of a ``sh -c``/``bash -c`` wrapper if there is one."""
    entry = service.get("entrypoint") or []
    cmd = service.get("command") or []
    entry = shlex.split(entry) if isinstance(entry, str) else [str(x) for x in entry]
    cmd = shlex.split(cmd) if isinstance(cmd, str) else [str(x) for x in cmd]
    argv = entry + cmd
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        return argv[2].replace("$$", "$")
    return shlex.join(argv).replace("$$", "$")


def tessera_invocations(script: str) -> list[list[str]]:
    """Every ``tessera ...`` command in a shell script, as argv (up to the next ``&&``, ``;``, ``|`` or ``>``)."""
    found = []
    for segment in re.split(r"&&|\|\||;|\n|\|", script):
        try:
            argv = shlex.split(segment)
        except ValueError:
            continue
        if argv and argv[0] == "exec":
            argv = argv[1:]
        if argv and Path(argv[0]).name == "tessera":
            found.append([a for a in argv[1:] if not a.startswith(">")])
    return found


def flink_run_argv(script: str) -> list[str] | None:
    """The argv after ``flink run`` in a script, or None if it runs no Flink job."""
    argv = shlex.split(script)
    for i, token in enumerate(argv[:-1]):
        if Path(token).name == "flink" and argv[i + 1] == "run":
            return argv[i + 2 :]
    return None


def tessera_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def to_repo_path(image_path: str) -> Path:
    assert image_path.startswith(IMAGE_ROOT + "/"), f"{image_path} is outside {IMAGE_ROOT}"
    return ROOT / image_path.removeprefix(IMAGE_ROOT + "/")


def runs_tessera_code(service: dict[str, Any]) -> bool:
    script = full_command(service)
    return bool(tessera_invocations(script)) or flink_run_argv(script) is not None


def cli_names() -> dict[str, Any]:
    """The subcommands registered in tessera/cli.py now, name -> typer command info."""
    from tessera.cli import app

    return {(c.name or c.callback.__name__.replace("_", "-")): c for c in app.registered_commands}


# ---- files --------------------------------------------------------------------------------------------------------


def test_there_is_something_to_check() -> None:
    assert COMPOSE.exists()
    names = {p.name for p in dockerfiles()}
    assert {"tessera.Dockerfile", "flink.Dockerfile"} <= names
    assert len(services()) >= 10


@pytest.mark.parametrize("dockerfile", dockerfiles(), ids=lambda p: p.name)
def test_every_copied_file_exists_and_is_in_the_build_context(dockerfile: Path) -> None:
    ignore = Path(f"{dockerfile}.dockerignore")
    assert ignore.exists(), f"{ignore.name} missing: the build would send .venv and .data as context"
    allowed = [
        line[1:].strip().rstrip("/")
        for line in ignore.read_text().splitlines()
        if line.startswith("!") and line[1:].strip()
    ]
    assert "*" in ignore.read_text().splitlines(), f"{ignore.name}: not an allow-list (`*`, then `!path`)"
    sources = list(copy_sources(dockerfile))
    assert sources, f"{dockerfile.name} copies nothing"
    for src in sources:
        src = src.rstrip("/")
        assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: no such file in the repository"
        assert any(src == a or src.startswith(a + "/") for a in allowed), (
            f"{dockerfile.name}: COPY {src} is excluded by {ignore.name}"
        )


def test_build_contexts_and_dockerfiles_exist() -> None:
    used = set()
    for name, svc in services().items():
        build = svc.get("build")
        if build is None:
            assert "image" in svc, f"{name}: neither image nor build"
            continue
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        used.add(dockerfile.resolve())
    assert {p.resolve() for p in dockerfiles()} <= used, "a Dockerfile in docker/ no service builds"


def test_base_images_are_pinned() -> None:
    for dockerfile in dockerfiles():
        defaults = args_of(dockerfile)
        for ins, rest in instructions(dockerfile):
            if ins != "FROM":
                continue
            image = rest.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m, d=defaults: d.get(m.group(1), m.group(0)), image)
            assert ":" in image and not image.endswith(":latest"), f"{dockerfile.name}: FROM {image} unpinned"
    for name, svc in services().items():
        if "image" in svc and "build" not in svc:
            assert ":" in svc["image"] and not svc["image"].endswith(":latest"), f"{name}: {svc['image']}"


# ---- compose wiring -----------------------------------------------------------------------------------------------


def test_depends_on_names_existing_services() -> None:
    for name, svc in services().items():
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services(), f"{name} depends on unknown service {dep}"
            assert dep != name


def test_one_shots_are_awaited_as_completed_and_long_runners_as_healthy() -> None:
    one_shots = {n for n, s in services().items() if s.get("restart") == "no"}
    for name, svc in services().items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            continue
        for dep, spec in deps.items():
            if dep in one_shots:
                assert spec["condition"] == "service_completed_successfully", f"{name} -> {dep}"


def test_named_volumes_are_declared() -> None:
    declared = set(compose().get("volumes") or {})
    for name, svc in services().items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source")
            if source and not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"


def test_published_ports_bind_loopback_only() -> None:
    published = 0
    for name, svc in services().items():
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} is not bound to 127.0.0.1"
            published += 1
    assert published >= 3


def test_api_listens_where_it_is_published_and_healthchecked() -> None:
    api = services()["api"]
    env = tessera_env(api)
    assert env["TESSERA_API_HOST"] == "0.0.0.0", "inside the container the API must listen beyond loopback"
    container_ports = {str(p).rsplit(":", 1)[1] for p in api["ports"]}
    assert container_ports == {env["TESSERA_API_PORT"]}
    tessera_df = (DOCKER / "tessera.Dockerfile").read_text()
    assert "/healthz" in tessera_df and "HEALTHCHECK" in tessera_df


def test_long_running_services_have_healthchecks() -> None:
    tessera_image_has_one = "HEALTHCHECK" in (DOCKER / "tessera.Dockerfile").read_text()
    for name, svc in services().items():
        if svc.get("restart") == "no" or svc.get("profiles"):
            continue
        hc = svc.get("healthcheck")
        built_from_tessera = svc.get("build", {}).get("dockerfile") == "docker/tessera.Dockerfile"
        if hc is None and built_from_tessera and tessera_image_has_one:
            continue
        assert hc and not hc.get("disable"), f"{name} runs for good but has no healthcheck"


def test_interpolated_variables_have_defaults() -> None:
    """`docker compose up` must work with no .env file: every ${VAR} has a default. (Not `${VAR:?}`: compose
    interpolates the whole file, so one required variable breaks every command, even for unrelated services.)"""
    text = COMPOSE.read_text().replace("$$", "")
    refs = re.findall(r"\$\{([^}]+)\}", text)
    assert refs
    for ref in refs:
        assert ":-" in ref, f"${{{ref}}} has no default"


def test_readme_documents_every_variable_and_knob() -> None:
    readme = (DOCKER / "README.md").read_text()
    from tessera.config import ENV_VARS

    for var in ENV_VARS:
        assert f"`{var}`" in readme, f"docker/README.md does not document {var}"
    knobs = {ref.split(":")[0] for ref in re.findall(r"\$\{([^}]+)\}", COMPOSE.read_text().replace("$$", ""))}
    for knob in knobs:
        assert f"`{knob}`" in readme, f"docker/README.md does not document the compose variable {knob}"


# ---- configuration: TESSERA_* only, and only the ones tessera reads --------------------------------------------


def test_every_tessera_variable_is_one_tessera_reads() -> None:
    from tessera.config import ENV_VARS

    seen = set()
    for name, svc in services().items():
        for key in tessera_env(svc):
            if key.startswith("TESSERA_"):
                assert key in ENV_VARS, f"{name}: {key} is not in tessera.config.ENV_VARS"
                seen.add(key)
    for dockerfile in dockerfiles():
        for key in re.findall(r"\b(TESSERA_[A-Z_]+)=", dockerfile.read_text()):
            if key != "TESSERA_VENV":  # the Flink image's own path variable, not a setting
                assert key in ENV_VARS, f"{dockerfile.name}: {key} is not in tessera.config.ENV_VARS"
    # The deployment sets where each shared resource lives (no loopback defaults inside containers).
    assert {
        "TESSERA_KAFKA_BOOTSTRAP",
        "TESSERA_MEMCACHED",
        "TESSERA_BULK_STORE",
        "TESSERA_CHECKPOINT_DIR",
        "TESSERA_SPARK_MASTER",
    } <= seen


def test_tessera_services_are_configured_only_by_tessera_variables() -> None:
    checked = 0
    for name, svc in services().items():
        if not runs_tessera_code(svc):
            continue
        checked += 1
        others = [k for k in tessera_env(svc) if not k.startswith("TESSERA_")]
        assert not others, f"{name} runs tessera but is configured by {others}"
    assert checked >= 4


def test_memcached_variable_names_every_memcached_service() -> None:
    nodes = {s.split(":")[0] for s in tessera_env(services()["api"])["TESSERA_MEMCACHED"].split(",")}
    memcached_services = {
        n for n, s in services().items() if str(s.get("image", "")).startswith("memcached:")
    }
    assert nodes == memcached_services and len(nodes) == 3


def test_checkpoint_dir_is_one_volume_shared_by_the_flink_processes() -> None:
    path = tessera_env(services()["flink-submit"])["TESSERA_CHECKPOINT_DIR"]
    mounts = {}
    for name in ("jobmanager", "taskmanager", "flink-submit"):
        vols = [v for v in services()[name].get("volumes", []) if v.split(":")[1] == path]
        assert vols, f"{name} does not mount {path}"
        mounts[name] = vols[0].split(":")[0]
    assert len(set(mounts.values())) == 1, mounts
    assert path in (DOCKER / "flink.Dockerfile").read_text(), (
        "the image must own the mount point (user flink)"
    )


# ---- commands -----------------------------------------------------------------------------------------------------


def _invocations() -> list[tuple[str, list[str]]]:
    found = []
    for name, svc in services().items():
        for argv in tessera_invocations(full_command(svc)):
            found.append((name, argv))
    return found


@pytest.mark.parametrize(("service", "argv"), _invocations(), ids=lambda x: x if isinstance(x, str) else x[0])
def test_tessera_commands_are_real_subcommands(service: str, argv: list[str]) -> None:
    from typer.testing import CliRunner

    from tessera.cli import app

    sub = argv[0]
    names = cli_names()
    if sub not in names:
        if sub in PENDING_COMMANDS:
            pytest.xfail(f"`tessera {sub}` ({service}) is not in tessera/cli.py yet")
        pytest.fail(f"{service}: `tessera {sub}` is not a tessera subcommand (have {sorted(names)})")
    result = CliRunner().invoke(app, [sub, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for flag in (a.split("=")[0] for a in argv[1:] if a.startswith("--")):
        assert flag in result.output, f"{service}: `tessera {sub}` has no option {flag}"


def test_the_api_service_serves() -> None:
    assert ["serve"] in [argv[:1] for _, argv in _invocations() if _ == "api"]


def test_the_stream_job_submission_matches_the_job_and_the_flink_cli() -> None:
    script = full_command(services()["flink-submit"])
    argv = flink_run_argv(script)
    assert argv is not None, "flink-submit does not run `flink run`"
    py = argv[argv.index("-py") + 1]
    assert (to_repo_path(py)).is_file(), f"-py {py}: no such file in the repository"
    # Flink's own options come first; the job's arguments start at the first long option Flink does not know.
    flink_help = _flink_run_help()
    split = next(
        i for i, a in enumerate(argv) if a.startswith("--") and f"{a.split('=')[0]} " not in flink_help + " "
    )
    flink_flags = [a for a in argv[:split] if a.startswith("-")]
    job_flags = [a.split("=")[0] for a in argv[split:] if a.startswith("--")]
    for flag in flink_flags:
        name = "-D" if flag.startswith("-D") else flag
        assert re.search(rf"(^|[\s,]){re.escape(name)}[\s,]", flink_help, re.M), f"flink run has no {name}"
    job_help = _module_help("flink_jobs.job")
    for flag in job_flags:
        assert flag in job_help, f"flink_jobs/job.py has no option {flag}"
    for needed in ("--plan", "--bootstrap", "--memcached", "--checkpoint-dir"):
        assert needed in job_flags
    assert argv[argv.index("-pyexec") + 1] == "/opt/tessera-venv/bin/python"
    # The plan the job reads is the one the `plan` one-shot writes, through the same volume.
    plan_path = argv[argv.index("--plan") + 1]
    plan_script = full_command(services()["plan"])
    assert f"> {plan_path}" in plan_script
    assert "plan" in [argv[0] for argv in tessera_invocations(plan_script)]


def _flink_run_help() -> str:
    if not FLINK_BIN.exists():
        pytest.skip("no .venv-flink (scripts/setup-streaming.sh flink): cannot ask `flink run --help`")
    proc = subprocess.run(
        [str(FLINK_BIN), "run", "--help"], capture_output=True, text=True, timeout=120, env=_java_env()
    )
    assert "-pyexec" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


def _module_help(module: str) -> str:
    """``python -m MODULE --help``, in the main venv if the module imports there, else the Flink venv."""
    for python in (sys.executable, FLINK_PYTHON):
        if not Path(python).exists():
            continue
        proc = subprocess.run(
            [str(python), "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        if proc.returncode == 0:
            return proc.stdout
    pytest.fail(f"`python -m {module} --help` fails in both environments:\n{proc.stderr}")


def _java_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


# ---- pins ---------------------------------------------------------------------------------------------------------


def _setup_streaming_pins() -> dict[str, Any]:
    text = SETUP_STREAMING.read_text()
    flink = re.search(r'^FLINK_PKG="([^"]+)"', text, re.M)
    jars = re.search(r'^JARS_WHEEL="([^"]+)"', text, re.M)
    members = re.search(r"^JAR_MEMBERS=\(([^)]*)\)", text, re.M)
    assert flink and jars and members, "scripts/setup-streaming.sh no longer names its pins the same way"
    return {
        "apache_flink": flink.group(1),
        "jars_wheel": jars.group(1),
        "jar_members": shlex.split(members.group(1)),
    }


def test_flink_image_pins_match_the_setup_script() -> None:
    pins = _setup_streaming_pins()
    dockerfile = DOCKER / "flink.Dockerfile"
    args = args_of(dockerfile)
    assert args["APACHE_FLINK"] == pins["apache_flink"]
    assert args["JARS_WHEEL"] == pins["jars_wheel"]
    # The Flink cluster (base image) is the version of the PyFlink the job runs with.
    assert args["FLINK_VERSION"] == pins["apache_flink"].split("==")[1]
    text = dockerfile.read_text()
    for member in pins["jar_members"]:
        assert f"'{member}'" in text, f"flink.Dockerfile does not extract {member}"
        assert f"/opt/flink/lib/{Path(member).name}" in text
    assert "pip freeze" in text and "-c /tmp/flink-constraints.txt" in text, (
        "pyarrow must stay at Flink's pin"
    )


def test_compose_flink_properties_point_python_at_the_image_venv() -> None:
    props = yaml.safe_load(services()["taskmanager"]["environment"]["FLINK_PROPERTIES"])
    venv_python = "/opt/tessera-venv/bin/python"
    assert props["python.executable"] == venv_python
    assert "TESSERA_VENV=/opt/tessera-venv" in (DOCKER / "flink.Dockerfile").read_text()


def test_spark_services_run_the_pinned_pyspark() -> None:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["main"]
    assert any(d.startswith("pyspark==") for d in deps), "the Spark nodes rely on the pinned pyspark wheel"
    for name in ("spark-master", "spark-worker"):
        assert services()[name]["build"]["dockerfile"] == "docker/tessera.Dockerfile"


# ---- the plan: topics and parallelism -----------------------------------------------------------------------------


def _default(var: str) -> int:
    m = re.search(rf"\$\{{{var}:-(\d+)\}}", COMPOSE.read_text())
    assert m, f"no default for {var}"
    return int(m.group(1))


def test_topics_created_cover_what_the_plan_reads_and_writes() -> None:
    from features.compile import compile_repo
    from features.discovery import load_repo

    repo = tessera_env(services()["api"])["TESSERA_REPO"]
    plan = compile_repo(load_repo(to_repo_path(repo)))
    needed = set()
    for gb in plan.group_bys:
        if gb.stream is not None:
            needed |= {gb.source.topic, gb.source.late_topic, gb.source.dead_letter_topic}
    assert needed
    script = full_command(services()["kafka-init"])
    m = re.search(r"for topic in ([^;]+);", script)
    assert m, "kafka-init: no `for topic in ...;` list"
    created = set(m.group(1).split())
    assert needed <= created, (
        f"topics the plan uses but kafka-init does not create: {sorted(needed - created)}"
    )
    assert _default("KAFKA_PARTITIONS") >= _default("FLINK_PARALLELISM"), "idle Flink source subtasks"


# ---- cluster-shaped commands, run locally ------------------------------------------------------------------------


def _has_java() -> bool:
    return shutil.which("java") is not None


@pytest.mark.skipif(not _has_java(), reason="needs Java 17")
def test_spark_submit_from_the_pyspark_wheel_runs() -> None:
    proc = subprocess.run(
        [str(VENV_BIN / "spark-submit"), "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_java_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "version 4.3.0" in proc.stdout + proc.stderr


@pytest.mark.skipif(not _has_java(), reason="needs Java 17")
@pytest.mark.parametrize("service", ["spark-master", "spark-worker"])
def test_spark_standalone_commands_exist_in_the_wheel(service: str) -> None:
    argv = shlex.split(full_command(services()[service]))
    assert argv[0] == "spark-class"
    proc = subprocess.run(
        [str(VENV_BIN / "spark-class"), argv[1], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_java_env(),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Usage:" in out, out
    for flag in (a for a in argv[2:] if a.startswith("--")):
        assert flag in out, f"{service}: {argv[1]} has no option {flag}"


# ---- `flink run` against a local mini-cluster (the submitter's command, its target switched to local) ------------


def _local_flink_run_argv(bootstrap: str, topic: str, out: Path) -> list[str]:
    """compose's `flink run` options with the remote target made local and the image paths made this machine's;
    the program is the smoke job (the tiling job needs memcached and a plan; tests/streaming covers it)."""
    argv = flink_run_argv(full_command(services()["flink-submit"]))
    assert argv is not None
    options = argv[: argv.index("-py")]
    local = []
    skip = False
    for token in options:
        if skip:
            skip = False
            continue
        if token in ("--target", "-t"):
            local += [token, "local"]
            skip = True
        elif token.startswith("-Drest.address="):
            local.append("-Drest.address=127.0.0.1")
        else:
            local.append(token)
    local = [t for t in local if t not in ("--detached", "-d")]  # wait for the bounded job to finish
    pyexec = str(FLINK_PYTHON)
    program = ["-py", str(ROOT / "flink_jobs" / "smoke.py"), "-pyexec", pyexec, "-pyclientexec", pyexec]
    job = ["--bootstrap", bootstrap, "--topic", topic, "--group-id", f"deploy-{topic}", "--out", str(out)]
    return [str(FLINK_BIN), "run", *local, "-Drest.bind-address=127.0.0.1", *program, *job]


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.timeout(300)
def test_flink_run_submits_a_python_job_to_a_local_mini_cluster(tmp_path: Path) -> None:
    """`flink run -py … -pyexec … -pyclientexec …` (the submitter's shape) runs a Kafka-reading PyFlink job."""
    import json
    import signal

    import pyarrow as pa

    from flink_jobs.broker import create_topics, local_broker, tansu_binary
    from flink_jobs.replay import replay

    if not (FLINK_BIN.exists() and FLINK_PYTHON.exists()):
        pytest.skip("no .venv-flink: run scripts/setup-streaming.sh")
    try:
        tansu_binary()
    except Exception as e:
        pytest.skip(f"no broker binary: {e}")
    n, cards = 300, 7
    with local_broker(pid_file=tmp_path / "tansu.pid") as broker:
        create_topics(broker.bootstrap, {"deploy-check": 2})
        table = pa.table(
            {
                "ts": pa.array([1_709_251_200_000 + 10 * i for i in range(n)], pa.int64()),
                "card_id": [f"card-{i % cards}" for i in range(n)],
            }
        )
        replay(table, "deploy-check", broker.bootstrap, key="card_id", event_time="ts")
        out = tmp_path / "counts.json"
        env = dict(os.environ, PATH=f"{FLINK_PYTHON.parent}{os.pathsep}{os.environ.get('PATH', '')}")
        cmd = _local_flink_run_argv(broker.bootstrap, "deploy-check", out)
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"flink run timed out:\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"{shlex.join(cmd)}\n{stdout[-3000:]}\n{stderr[-4000:]}"
    assert "Job has been submitted" in stdout
    result = json.loads(out.read_text())
    assert result["events"] == n and len(result["counts"]) == cards and result["late"] == 0
