"""The configuration reference (docs/reference/configuration.md), generated from conf/ so it cannot drift
from the code: every group with its options, and every key with its default per task and the comment
written beside it in the YAML.

Comments are read from the YAML files themselves (OmegaConf drops them): a key's comment is its inline
`# ...`, the comment-only lines right under it that are indented past it, and the comment block right
above it. Defaults come from Hydra's own composition of `task=<each task>`, so a task's choice of model,
optimizer or trainer shows as that task's default. tests/test_config_reference.py fails when a key has
no comment anywhere, when the reference names a key that does not exist, or when the committed file is
not what this module writes.

    python -m regbench.config_reference > docs/reference/configuration.md
"""
from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parent / "conf"
if not CONF.is_dir():  # a source checkout: the configs live in the top-level conf/
    CONF = Path(__file__).resolve().parent.parent / "conf"
# Groups a user picks with GROUP=OPTION, in the order the reference shows them
GROUPS = ("task", "model", "regularizer", "optimizer", "schedule", "trainer", "augment", "logger", "paths",
          "experiment")
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w@.-]*):(?P<rest>.*)$")


def _package(path: Path) -> str:
    """Where a file's keys go: its `# @package` header (`_global_`: the top), else its group's name."""
    first = path.read_text().splitlines()[:1]
    if first and first[0].startswith("# @package "):
        package = first[0].removeprefix("# @package ").strip()
        return "" if package == "_global_" else package
    group = path.relative_to(CONF).parts[0]
    return "" if group == "config.yaml" else group


def _comment(rest: str) -> str:
    """The inline comment of a `key: value  # comment` line (a '#' inside quotes is not one)."""
    quoted = None
    for i, ch in enumerate(rest):
        if ch in "'\"":
            quoted = None if quoted == ch else (quoted or ch)
        elif ch == "#" and quoted is None and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1:].strip()
    return ""


def comments(path: Path, prefix: str) -> dict[str, str]:
    """Dotted key -> its comment, for every key of one YAML file (keys under `defaults` and `hydra` left out)."""
    lines = path.read_text().splitlines()
    found: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    block: list[str] = []
    last: tuple[str, int] | None = None  # the last key and its indent, for continuation comments
    header = True  # the file's opening comment describes the option (options()), not its first key
    for line in lines:
        stripped = line.strip()
        if header and stripped.startswith("#"):
            continue
        header = False
        if not stripped:
            block, last = [], None
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            text = stripped.lstrip("#").strip()
            if last is not None and indent > last[1] and found.get(last[0]):
                found[last[0]] += " " + text  # continues the comment of the key above
            elif not text.startswith("@package"):
                block.append(text)
                last = None
            continue
        match = KEY_LINE.match(line)
        if not match or stripped.startswith("-"):
            block, last = [], None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = match["key"]
        path_parts = [k for _, k in stack] + [key]
        stack.append((indent, key))
        dotted = ".".join(([prefix] if prefix else []) + path_parts)
        if path_parts[0] in ("defaults", "hydra"):
            block, last = [], None
            continue
        text = " ".join([*block, _comment(match["rest"])]).strip()
        if text:
            found[dotted] = text
        elif dotted not in found:
            found[dotted] = ""
        block, last = [], (dotted, indent)
    return found


def all_comments() -> dict[str, str]:
    """Every key's comment over every file that sets it; the longest one wins (the defining file's)."""
    out: dict[str, str] = {}
    for path in sorted(CONF.rglob("*.yaml")):
        if path.relative_to(CONF).parts[0] in ("hydra", "experiment"):
            continue
        for key, text in comments(path, _package(path)).items():
            if len(text) > len(out.get(key, "")):
                out[key] = text
            out.setdefault(key, text)
    return out


def options(group: str) -> list[tuple[str, str]]:
    """(option, its description: the first sentence of the file's opening comment) for every option."""
    out = []
    for path in sorted((CONF / group).glob("*.yaml")):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            if "@package" not in line:
                header.append(line.lstrip("#").strip())
        text = " ".join(header)
        if len(text) > 200:  # the sentences that fit, else the words that fit
            cut = text[:200]
            end = max(cut.rfind(". "), cut.rfind("; "))
            text = cut[:end + 1] if end > 40 else cut[:cut.rfind(" ")] + " …"
        out.append((path.stem, text))
    return out


def tasks() -> list[str]:
    return [name for name, _ in options("task")]


def compose(task: str) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[f"task={task}"])


def leaves(cfg: DictConfig) -> dict[str, object]:
    """Dotted key -> default, for every leaf of a composed config (interpolations left as written)."""
    out: dict[str, object] = {}

    def walk(node, prefix: str) -> None:
        for key in node:
            value = node._get_node(key)
            name = f"{prefix}{key}"
            if OmegaConf.is_dict(value):
                if len(value) == 0:
                    out[name] = {}
                walk(value, f"{name}.")
            else:
                out[name] = value._value() if not OmegaConf.is_missing(node, key) else "???"

    walk(cfg, "")
    return {k: v for k, v in out.items() if not k.startswith("hydra.")}


def defaults_by_task() -> dict[str, dict[str, object]]:
    return {task: leaves(compose(task)) for task in tasks()}


def _value(value: object) -> str:
    if isinstance(value, str):
        return value if value else '""'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def documented_keys(markdown: str) -> set[str]:
    """The keys a reference names in its tables' first column."""
    return {k for k in re.findall(r"^\| `([^`]+)` \|", markdown, flags=re.MULTILINE) if "=" not in k}


def _group_of(key: str) -> str:
    if key.startswith("data.augment."):
        return "augment"
    head = key.split(".", 1)[0]
    return head if head in GROUPS else ("task" if head in ("data",) else "top")


def reference() -> str:
    by_task = defaults_by_task()
    docs = all_comments()
    names = list(by_task)
    keys = list(dict.fromkeys(k for t in names for k in by_task[t]))
    lines = ["# Configuration reference", "",
             "Generated from `conf/` by `python -m regbench.config_reference` (a test fails when it is out of "
             "date): every configuration group with its options, then every key with its default and the "
             "comment beside it in the YAML. A key's default can depend on the task (a task picks its own "
             "model, optimizer and trainer); the column shows each task's value where they differ.", "",
             "Set a group with `GROUP=OPTION` and a key with `KEY=VALUE`, e.g. "
             "`regbench task=conll2003 regularizer=bn_dropout optimizer.lr=0.002 seed=1`.", "",
             "## Groups and options", ""]
    for group in GROUPS:
        lines += [f"### `{group}`", "", "| option | what it is |", "|---|---|"]
        lines += [f"| `{group}={name}` | {_cell(text)} |" for name, text in options(group)]
        lines.append("")
    lines += ["## Keys", ""]
    sections: dict[str, list[str]] = {}
    for key in keys:
        sections.setdefault(_group_of(key), []).append(key)
    titles = {"top": "Top level", "task": "task and data (the task's own keys)"}
    for section in ["top", *GROUPS]:
        if section not in sections:
            continue
        lines += [f"### {titles.get(section, section)}", "", "| key | default | what it does |", "|---|---|---|"]
        for key in sections[section]:
            values: dict[str, list[str]] = {}
            for task in names:
                if key in by_task[task]:
                    values.setdefault(_value(by_task[task][key]), []).append(task)
            if len(values) == 1:
                (value, where), = values.items()
                default = f"`{_cell(value)}`" + ("" if len(where) == len(names) else f" ({', '.join(where)})")
            else:
                default = "<br>".join(f"`{_cell(v)}` ({', '.join(w)})" for v, w in values.items())
            lines.append(f"| `{key}` | {default} | {_cell(docs.get(key, ''))} |")
        lines.append("")
    return "\n".join(lines)


def undocumented() -> list[str]:
    """Leaf keys of some task's composed config that no YAML file comments."""
    docs = all_comments()
    keys = dict.fromkeys(k for defaults in defaults_by_task().values() for k in defaults)
    return [k for k in keys if not docs.get(k)]


if __name__ == "__main__":
    print(reference())
