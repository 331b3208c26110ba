"""`omsd service`: install and manage one daemon per config file as a systemd unit.

``install NAME --config FILE`` renders the packaged template ``omsd@.service``
(``systemd/omsd@.service`` in a checkout links to the same file) into
``/etc/systemd/system/omsd@NAME.service``: ExecStart/ExecStop run this
installation's own ``omsd``/``omsctl`` on FILE, ``User``/``Group`` are the
service account, ``EnvironmentFile`` is ``/etc/omsd/NAME.env`` (created mode
0600 when missing, filled with the values of the variables the config refers
to), and directories the config writes outside the unit's own are added to
``ReadWritePaths``. The unit records how it was installed, so ``reinstall``
can render it again from a newer template.

The verbs of OpenMSIStream's ManageService are accepted too (``stop_and_remove``,
``stop_and_reinstall``, ``stop_and_restart``); every verb is a list of steps
(write a file, remove one, run ``systemctl``) that ``--dry-run`` prints instead
of doing.
"""

from __future__ import annotations

import argparse
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from omsd import exitcodes
from omsd.config import ConfigError, load_config

TEMPLATE_NAME = "omsd@.service"
TEMPLATE_CONFIG = "/etc/omsd/%i.yaml"
UNIT_DIR = Path("/etc/systemd/system")
ENV_DIR = Path("/etc/omsd")
# The unit's own writable directories (StateDirectory, RuntimeDirectory, ReadWritePaths of the template).
UNIT_WRITABLE = (Path("/var/lib/omsd"), Path("/run/omsd"), Path("/srv/omsd"))
# Hidden from the service by ProtectHome=yes and PrivateTmp=yes.
UNIT_HIDDEN = (Path("/home"), Path("/root"), Path("/run/user"), Path("/tmp"), Path("/var/tmp"))
RECORD_PREFIX = "# omsd-service: "
_UNSET = "@omsd-service-unset@"
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?$")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)|\$([A-Za-z_][A-Za-z0-9_]*)")
MANAGE_VERBS = ("start", "stop", "restart", "status", "remove", "reinstall",
                "stop_and_remove", "stop_and_reinstall", "stop_and_restart")


class ServiceError(RuntimeError):
    """A problem that stops the command before anything is changed; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = exitcodes.RET_USAGE) -> None:
        super().__init__(message)
        self.code = code


def template_text() -> str:
    """The packaged unit template (the one file both the installer and systemd/ use)."""
    return (resources.files("omsd") / "units" / TEMPLATE_NAME).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Install:
    """What ``install`` was given; recorded in the unit so ``reinstall`` can repeat it."""

    name: str
    config: Path
    user: str
    env_file: Path

    def record(self) -> str:
        return RECORD_PREFIX + json.dumps({"config": str(self.config), "user": self.user,
                                           "env_file": str(self.env_file)})


# -- rendering -------------------------------------------------------------------


def _unit_value(text: str, *, env: bool) -> str:
    """One word of a unit-file setting: specifiers (and, in commands, variables) escaped, quoted when needed."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if env:
        escaped = escaped.replace("$", "$$")
    if escaped != text or not text or any(c.isspace() or c == "'" for c in text):
        return f'"{escaped}"'
    return escaped


def _command(*argv: str | Path) -> str:
    return " ".join(_unit_value(str(arg), env=True) for arg in argv)


def render_unit(install: Install, omsd_bin: Path, omsctl_bin: Path, group: str,
                extra_paths: list[Path], template: str | None = None) -> str:
    """The unit file ``omsd@NAME.service`` for ``install``, made from the template."""
    replace = {"User": install.user, "Group": group}
    # The template's commands keep their arguments; only the programs and the config path change.
    programs = {"/usr/bin/env omsd ": f"{_command(omsd_bin)} ", "/usr/bin/env omsctl ": f"{_command(omsctl_bin)} ",
                TEMPLATE_CONFIG: _command(install.config)}
    after = {"Environment": [f"EnvironmentFile={install.env_file}"],
             "ReadWritePaths": [f"ReadWritePaths={_unit_value(f'-{p}', env=False)}" for p in extra_paths]}
    lines = (template or template_text()).splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)  # the template's own explanation; the rendered unit gets its own below
    out = [f"# omsd@{install.name}: written by `omsd service install` from omsd's {TEMPLATE_NAME} template.",
           f"# Change it with `omsd service reinstall {install.name} [--config FILE] [--user USER]`,",
           f"# or with a drop-in (`systemctl edit omsd@{install.name}`) for anything the installer does not set.",
           install.record(), ""]
    seen: set[str] = set()
    for line in lines:
        key = line.split("=", 1)[0] if "=" in line and not line.startswith("#") else None
        if key in replace and key not in seen:
            out.append(f"{key}={replace[key]}")
        elif key in ("ExecStart", "ExecStop"):
            for old, new in programs.items():
                if old in line:
                    line = line.replace(old, new)
                    seen.add(old)
            out.append(line)
        else:
            out.append(line)
        if key in after and key not in seen:
            out.extend(after[key])
        if key is not None:
            seen.add(key)
    missing = sorted((set(replace) | set(after) | set(programs)) - seen)
    if missing:
        raise ServiceError(f"the unit template has no {', '.join(missing)} line", exitcodes.RET_ERROR)
    return "\n".join(out) + "\n"


def read_record(unit_file: Path) -> Install:
    """The install parameters recorded in an installed unit."""
    try:
        text = unit_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ServiceError(f"{unit_file} is not installed (use `omsd service install`)", exitcodes.RET_ERROR) from None
    except OSError as exc:
        raise ServiceError(f"cannot read {unit_file}: {exc.strerror}", exitcodes.RET_ERROR) from None
    for line in text.splitlines():
        if line.startswith(RECORD_PREFIX):
            data = json.loads(line[len(RECORD_PREFIX):])
            name = unit_file.name.removeprefix("omsd@").removesuffix(".service")
            return Install(name, Path(data["config"]), data["user"], Path(data["env_file"]))
    raise ServiceError(f"{unit_file} was not written by `omsd service install`; reinstall it with install",
                       exitcodes.RET_ERROR)


# -- what the config needs ---------------------------------------------------------


def config_paths(config_file: Path, environ: dict[str, str]) -> tuple[list[Path], list[str]]:
    """Directories the daemon writes (state, socket, save steps) and warnings about the config."""
    saved = os.environ.copy()
    os.environ.update(environ)  # ${VAR} in the config may come from the environment file
    for name in env_references(config_file):
        os.environ.setdefault(name, _UNSET)  # set only in the service's environment: a secret, most often
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        return [], [f"cannot read the config now ({exc}); no extra ReadWritePaths added"]
    finally:
        os.environ.clear()
        os.environ.update(saved)
    warnings = []
    paths = [config.state_dir, config.control_socket.parent]
    for name, path in (("state_dir", config.state_dir), ("control_socket", config.control_socket)):
        if not path.is_absolute():
            warnings.append(f"{config_file}: {name} '{path}' is relative; under systemd it is relative to '/' "
                            "(use an absolute path)")
    for pipeline in config.pipelines:
        paths += [Path(str(params["dir"])) for kind, params in pipeline.steps if kind == "save" and "dir" in params]
    extra: list[Path] = []
    for path in paths:
        if _UNSET in str(path):
            warnings.append(f"{config_file}: '{path}' uses a variable that is not set now; add it to "
                            "ReadWritePaths in a drop-in if the service writes there")
        elif path.is_absolute() and not any(path == base or base in path.parents for base in UNIT_WRITABLE) \
                and path not in extra:
            extra.append(path)
    return extra, warnings


def env_references(config_file: Path) -> list[str]:
    """Names of the environment variables the config file refers to (``${VAR}`` or ``$VAR``)."""
    text = config_file.read_text(encoding="utf-8", errors="replace")
    names = [a or b for a, b in _ENV_REF_RE.findall(text)]
    return sorted(set(names))


def env_file_text(install: Install, names: list[str], environ: dict[str, str]) -> str:
    lines = [f"# Environment of omsd@{install.name}.service, read by systemd (keep it mode 0600).",
             f"# One VAR=value per line; {install.config} can use them as ${{VAR}}."]
    for name in names:
        lines.append(f"{name}={environ[name]}" if name in environ else f"# {name}=   (not set when installed)")
    return "\n".join(lines) + "\n"


# -- steps -------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One act: write ``text`` to ``path``, remove ``path``, or run ``argv``."""

    kind: str  # "write", "remove", "run"
    path: Path | None = None
    text: str = ""
    mode: int = 0o644
    argv: tuple[str, ...] = ()
    secret: bool = False  # print the file's comments only
    # A command's exit code: "fail" stops the verb with a message; "pass" stops it silently with that code
    # (status: 3 means not running); "ignore" goes on (reset-failed of a unit that is gone).
    on_error: str = "fail"


def systemctl(*args: str, on_error: str = "fail") -> Step:
    return Step("run", argv=(os.environ.get("OMSD_SYSTEMCTL", "systemctl"), *args), on_error=on_error)


def _show(step: Step) -> str:
    if step.kind == "run":
        return f"would run: {shlex.join(step.argv)}"
    if step.kind == "remove":
        return f"would remove {step.path}"
    shown = step.text
    if step.secret:
        shown = "\n".join(line.split("=", 1)[0] + "=…" if "=" in line and not line.startswith("#") else line
                          for line in step.text.splitlines()) + "\n"
    body = "".join(f"    {line}\n" for line in shown.splitlines())
    return f"would write {step.path} (mode {step.mode:04o}):\n{body}".rstrip("\n")


def run_steps(steps: list[Step], *, dry_run: bool) -> int:
    """Do (or print) the steps in order; stop at the first failure and return its exit code."""
    for step in steps:
        if dry_run:
            print(_show(step), flush=True)
            continue
        try:
            if step.kind == "write":
                step.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(step.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, step.mode)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(step.text)
                os.chmod(step.path, step.mode)
                print(f"wrote {step.path}", flush=True)
            elif step.kind == "remove":
                step.path.unlink(missing_ok=True)
                print(f"removed {step.path}", flush=True)
            else:
                if shutil.which(step.argv[0]) is None:
                    print(f"omsd service: error: {step.argv[0]} not found (systemd is needed)", file=sys.stderr)
                    return exitcodes.RET_ERROR
                code = subprocess.run(step.argv).returncode
                if code != 0 and step.on_error != "ignore":
                    if step.on_error == "fail":
                        print(f"omsd service: `{shlex.join(step.argv)}` exited with {code}", file=sys.stderr)
                    return code
        except PermissionError as exc:
            print(f"omsd service: error: {exc.filename}: permission denied (run it as root, e.g. with sudo)",
                  file=sys.stderr)
            return exitcodes.RET_ERROR
        except OSError as exc:
            print(f"omsd service: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
            return exitcodes.RET_ERROR
    return exitcodes.RET_OK


# -- verbs -------------------------------------------------------------------------


def unit_name(name: str) -> str:
    return f"omsd@{name}.service"


def _binaries() -> tuple[Path, Path]:
    """This installation's own ``omsd`` and ``omsctl`` (beside its Python), else the ones on PATH."""
    found = []
    for script in ("omsd", "omsctl"):
        beside = Path(sys.executable).with_name(script)
        path = beside if beside.is_file() else (Path(p) if (p := shutil.which(script)) else None)
        if path is None:
            raise ServiceError(f"cannot find the '{script}' command of this installation", exitcodes.RET_ERROR)
        found.append(path.absolute())
    return found[0], found[1]


def _group_of(user: str, *, dry_run: bool) -> str:
    if not _USER_RE.match(user):
        raise ServiceError(f"--user {user!r} is not a user name")
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        message = (f"user '{user}' does not exist; create it first, e.g. "
                   f"useradd --system --home-dir /var/lib/omsd --shell /usr/sbin/nologin {user}")
        if not dry_run:
            raise ServiceError(message, exitcodes.RET_ERROR) from None
        print(f"omsd service: warning: {message}", file=sys.stderr)
        return user


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    try:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip().strip('"')
    except OSError:
        pass
    return values


def install_steps(install: Install, unit_dir: Path, *, dry_run: bool, enable: bool = True) -> list[Step]:
    """Write the unit (and the environment file when missing), reload systemd, enable the unit."""
    if not install.config.is_file():
        raise ServiceError(f"{install.config}: no such config file")
    for path in (install.config, install.env_file):
        if any(ord(c) < 32 for c in str(path)):
            raise ServiceError(f"{path!r}: a path with control characters cannot go into a unit file")
    if any(c.isspace() or c in "\"'\\" for c in str(install.env_file)):
        raise ServiceError(f"{install.env_file}: the environment file's path must not contain spaces or quotes")
    omsd_bin, omsctl_bin = _binaries()
    group = _group_of(install.user, dry_run=dry_run)
    env_values = _read_env_file(install.env_file)
    extra_paths, warnings = config_paths(install.config, env_values)
    for warning in warnings:
        print(f"omsd service: warning: {warning}", file=sys.stderr)
    for path in (omsd_bin, install.config, *extra_paths):
        if any(base in path.parents for base in UNIT_HIDDEN):
            print(f"omsd service: warning: {path} is hidden from the service (ProtectHome=yes, PrivateTmp=yes); "
                  "move it, or relax that in a drop-in", file=sys.stderr)
    missing = [p for p in extra_paths if not p.exists()]
    if missing:
        print(f"omsd service: note: create {', '.join(map(str, missing))} before starting "
              f"(e.g. install -d -o {install.user} -g {group} DIR)", file=sys.stderr)
    unit = render_unit(install, omsd_bin, omsctl_bin, group, extra_paths)
    steps = [Step("write", unit_dir / unit_name(install.name), unit)]
    if not install.env_file.exists():
        steps.append(Step("write", install.env_file, env_file_text(install, env_references(install.config),
                                                                   dict(os.environ)), mode=0o600, secret=True))
    steps.append(systemctl("daemon-reload"))
    if enable:
        steps.append(systemctl("enable", unit_name(install.name)))
    return steps


def manage_steps(verb: str, name: str, unit_dir: Path, *, dry_run: bool,
                 overrides: dict[str, object] | None = None) -> list[Step]:
    """The steps of one management verb (OpenMSIStream's ManageService verbs included)."""
    unit = unit_name(name)
    unit_file = unit_dir / unit
    if verb in ("start", "stop", "restart"):
        return [systemctl(verb, unit)]
    if verb == "status":
        return [systemctl("status", unit, "--no-pager", "--full", on_error="pass")]
    if verb in ("remove", "stop_and_remove"):
        # disable --now also stops it: a running service never outlives its unit file.
        return [systemctl("disable", "--now", unit), Step("remove", unit_file),
                systemctl("daemon-reload"), systemctl("reset-failed", unit, on_error="ignore")]
    if verb in ("reinstall", "stop_and_reinstall", "stop_and_restart"):
        recorded = read_record(unit_file)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        install = Install(name, Path(given.get("config", recorded.config)).absolute(),
                          str(given.get("user", recorded.user)), Path(given.get("env_file", recorded.env_file)))
        steps = [systemctl("stop", unit)] if verb != "reinstall" else []
        steps += install_steps(install, unit_dir, dry_run=dry_run, enable=False)
        if verb == "stop_and_restart":
            steps.append(systemctl("start", unit))
        return steps
    raise ServiceError(f"unknown verb {verb!r}")


# -- command line ------------------------------------------------------------------


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Define ``omsd service VERB NAME ...``."""
    parser.add_argument("verb", choices=("install", *MANAGE_VERBS), metavar="VERB",
                        type=lambda v: v.replace("-", "_"),
                        help="install, start, stop, restart, status, remove, reinstall; OpenMSIStream's "
                             "stop_and_remove, stop_and_reinstall, stop_and_restart")
    parser.add_argument("name", metavar="NAME", help="instance name: the unit is omsd@NAME.service")
    parser.add_argument("--config", type=Path, default=None,
                        help="install/reinstall: the daemon's config file (required for install)")
    parser.add_argument("--user", default=None, help="install/reinstall: service account (default omsd)")
    parser.add_argument("--env-file", dest="env_file", type=Path, default=None,
                        help=f"install/reinstall: environment file (default {ENV_DIR}/NAME.env)")
    parser.add_argument("--unit-dir", dest="unit_dir", type=Path, default=UNIT_DIR,
                        help=f"where unit files go (default {UNIT_DIR})")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="print what would be written and run, change nothing")


def service_command(args: argparse.Namespace) -> int:
    """Run ``omsd service``; return the exit code."""
    try:
        if not _INSTANCE_RE.match(args.name):
            raise ServiceError(f"instance name {args.name!r}: use letters, digits and _ . : - only")
        if args.verb == "install":
            if args.config is None:
                raise ServiceError("install needs --config FILE")
            install = Install(args.name, args.config.absolute(), args.user or "omsd",
                              args.env_file or ENV_DIR / f"{args.name}.env")
            steps = install_steps(install, args.unit_dir, dry_run=args.dry_run)
        else:
            overrides = {"config": args.config, "user": args.user, "env_file": args.env_file}
            if args.verb not in ("reinstall", "stop_and_reinstall", "stop_and_restart") \
                    and any(v is not None for v in overrides.values()):
                raise ServiceError(f"--config, --user and --env-file belong to install and reinstall, not {args.verb}")
            steps = manage_steps(args.verb, args.name, args.unit_dir, dry_run=args.dry_run, overrides=overrides)
    except ServiceError as exc:
        print(f"omsd service: error: {exc}", file=sys.stderr)
        return exc.code
    return run_steps(steps, dry_run=args.dry_run)
