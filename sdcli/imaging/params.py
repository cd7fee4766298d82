"""Generation settings as A1111's `parameters` text, and back.

    a prompt (one or more lines)
    Negative prompt: what to avoid
    Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: sd15, ...

The last line is `Key: value` pairs separated by commas; a value that holds a comma, a colon,
a newline or a quote is written in double quotes with JSON escapes, as A1111 does.
"""
from __future__ import annotations

import json
import re

_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def _quote(value: str) -> str:
    # A1111 quotes a value holding a comma, a colon or a newline; a quote needs it here too
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


def format_parameters(prompt: str, negative_prompt: str, fields: dict[str, object]) -> str:
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(str(value))}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def parse_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """Return (prompt, negative prompt, {field: value}) from a `parameters` text."""
    lines = text.split("\n")
    fields: dict[str, str] = {}
    if lines and len(_PAIR.findall(lines[-1])) >= 3:
        for key, value in _PAIR.findall(lines.pop()):
            if value.startswith('"') and value.endswith('"') and len(value) >= 2:
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    value = value[1:-1]
            fields[key.strip()] = value.strip() if isinstance(value, str) else value
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    target = prompt_lines
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative_lines
            line = line[len("Negative prompt:"):].lstrip(" ")
        target.append(line)
    return "\n".join(prompt_lines), "\n".join(negative_lines), fields
