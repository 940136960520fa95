"""The (status code, ErrorInfo reason) pairs the sidecar raises, read from the source under sidecar/."""

from __future__ import annotations

import ast

from tests.helpers import REPO

# How each helper that builds an error receives its status code and reason.
_FIXED_CODES = {"failed_precondition": "FAILED_PRECONDITION", "invalid_argument": "INVALID_ARGUMENT"}


def _reason_parameters(trees: list[ast.Module]) -> dict[str, tuple[int, str | None]]:
    """Function name -> (position of its `reason` parameter, its default) for every error helper in sidecar/."""
    found: dict[str, tuple[int, str | None]] = {"DuoError": (1, None)}  # a dataclass: code, reason, message
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith(("note_", "auth_failure")):
                names = [a.arg for a in node.args.args]
                if "reason" in names:
                    index = names.index("reason")
                    defaults = node.args.defaults
                    offset = index - (len(names) - len(defaults))
                    default = defaults[offset] if offset >= 0 else None
                    text = default.value if isinstance(default, ast.Constant) else None
                    found[node.name] = (index, text if isinstance(text, str) else None)
    return found


def code_error_reasons() -> set[tuple[str, str]]:
    """(status code, reason) for every error the sidecar raises on purpose, read from its source."""
    trees = [ast.parse(path.read_text(), str(path)) for path in sorted((REPO / "sidecar").rglob("*.py"))]
    constants = {
        target.id: node.value.value
        for tree in trees
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    parameters = _reason_parameters(trees)
    pairs: set[tuple[str, str]] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name == "not_found" and node.args and isinstance(node.args[0], ast.Constant):
                pairs.add(("NOT_FOUND", f"{str(node.args[0].value).upper()}_NOT_FOUND"))
                continue
            if name not in parameters:
                continue
            index, default = parameters[name]
            keyword = next((k.value for k in node.keywords if k.arg == "reason"), None)
            argument = keyword or (node.args[index] if len(node.args) > index else None)
            if isinstance(argument, ast.Constant):
                reason = str(argument.value)
            elif isinstance(argument, ast.Name) and argument.id in constants:
                reason = constants[argument.id]
            elif argument is None and default is not None:
                reason = default
            else:
                continue  # a helper passing on its own `reason` parameter
            code = _FIXED_CODES.get(name)
            if code is None:
                code_node = node.args[0] if node.args else None
                assert isinstance(code_node, ast.Attribute), f"{name}(...) for {reason}: cannot read its status code"
                code = code_node.attr
            pairs.add((code, reason))
    return pairs
