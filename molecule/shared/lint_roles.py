#!/usr/bin/env python3
"""Project rules for the Ansible content that ansible-lint has no rule for (run by `make lint`).

Each rule is a mistake this repository once made:
- no `meta: flush_handlers` in the middle of a role (it runs every role's pending handlers while
  the role is half done); the last task of a role's tasks/main.yml may flush (a role boundary);
- no `command`/`shell` task running pip or venv (ansible.builtin.pip does both, idempotently);
- every role applied by a playbook carries tags (`--tags` must be able to select it);
- argument_specs: list-of-dict options describe their keys (`options`), secrets have `no_log`;
- no vault password file is tracked by git.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SECRET = re.compile(r"(secret|password|passphrase|token|private_key)$")
PIP_CMD = re.compile(r"(\bpip3?\b\s+install|-m\s+pip\b|-m\s+venv\b|\bvirtualenv\b)")


def tasks(node):
    if isinstance(node, list):
        for item in node:
            yield from tasks(item)
    elif isinstance(node, dict):
        yield node
        for key in ("block", "rescue", "always"):
            if key in node:
                yield from tasks(node[key])


def cmd_text(task: dict) -> str:
    for mod in ("ansible.builtin.command", "ansible.builtin.shell", "command", "shell"):
        if mod in task:
            arg = task[mod]
            if isinstance(arg, dict):
                arg = arg.get("cmd") or arg.get("argv") or ""
            return " ".join(arg) if isinstance(arg, list) else str(arg)
    return ""


def main() -> int:
    problems: list[str] = []
    for f in sorted(ROOT.glob("roles/*/tasks/*.yml")) + sorted(ROOT.glob("roles/*/handlers/*.yml")):
        top = yaml.safe_load(f.read_text()) or []
        for t in tasks(top):
            meta = t.get("ansible.builtin.meta", t.get("meta"))
            at_role_end = f.name == "main.yml" and f.parent.name == "tasks" and t is top[-1]
            if meta == "flush_handlers" and not at_role_end:
                problems.append(
                    f"{f.relative_to(ROOT)}: '{t.get('name')}' flushes handlers mid-role"
                )
            if PIP_CMD.search(cmd_text(t)):
                problems.append(
                    f"{f.relative_to(ROOT)}: '{t.get('name')}' runs pip/venv as a command: "
                    "use ansible.builtin.pip"
                )
    for f in sorted(ROOT.glob("playbooks/*.yml")):
        for play in yaml.safe_load(f.read_text()) or []:
            for role in play.get("roles", []):
                name = role if isinstance(role, str) else role.get("role", role.get("name"))
                if isinstance(role, str) or not role.get("tags"):
                    problems.append(f"{f.relative_to(ROOT)}: role {name} has no tags")
    for f in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        specs = yaml.safe_load(f.read_text())["argument_specs"]
        for entry, spec in specs.items():
            for opt, o in (spec.get("options") or {}).items():
                where = f"{f.relative_to(ROOT)}: {entry}.{opt}"
                if o.get("type") == "list" and o.get("elements") == "dict" and not o.get("options"):
                    problems.append(f"{where}: a list of dicts needs nested 'options'")
                if SECRET.search(opt) and o.get("no_log") is not True:
                    problems.append(f"{where}: a secret needs 'no_log: true'")
    tracked = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    problems += [
        f"{p}: a vault password file is tracked by git"
        for p in tracked
        if re.search(r"vault[-_.]?pass", Path(p).name, re.IGNORECASE)
        and Path(p).suffix not in (".sh", ".py", ".md")
    ]
    for p in problems:
        print(f"lint_roles: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
