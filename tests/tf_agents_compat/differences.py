"""docs/tf-agents-differences.md as the compat suite reads it: one line per difference,
``- `name`: what differs, and why``, found by name and cited by line number."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "tf-agents-differences.md"
RELATIVE = "docs/tf-agents-differences.md"
_ENTRY = re.compile(r"^- `([a-z0-9][a-z0-9-]*)`: (.+)$")


@dataclass(frozen=True)
class DifferencesDoc:
    """The named entries of the doc: name -> (line number, text)."""

    entries: dict[str, tuple[int, str]]

    @classmethod
    def load(cls, path: Path = DOC) -> DifferencesDoc:
        entries: dict[str, tuple[int, str]] = {}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = _ENTRY.match(line)
            if match:
                name = match.group(1)
                if name in entries:
                    raise ValueError(
                        f"{RELATIVE}:{number}: entry `{name}` already at line {entries[name][0]}"
                    )
                entries[name] = (number, match.group(2))
        return cls(entries)

    def reason(self, name: str) -> str:
        """``docs/tf-agents-differences.md:12 (name): text``, for an xfail's reason."""
        if name not in self.entries:
            raise KeyError(f"{RELATIVE}: expected an entry `{name}`, found none")
        number, text = self.entries[name]
        return f"{RELATIVE}:{number} ({name}): {text}"
