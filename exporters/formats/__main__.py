"""``python -m exporters.formats --write-schema``: writes the manifest schema with every
registered format's section into toolkit/schemas/manifest.schema.json (after adding a
format); ``--check`` exits 1 when the file differs."""

from __future__ import annotations

import json
import sys

from exporters import formats
from toolkit.bundle import schema as schema_lib


def main(argv: list[str]) -> int:
    text = json.dumps(formats.schema(), indent=2) + "\n"
    if argv == ["--write-schema"]:
        schema_lib.SCHEMA_PATH.write_text(text)
        return 0
    if argv == ["--check"]:
        same = schema_lib.SCHEMA_PATH.read_text() == text
        print("up to date" if same else f"{schema_lib.SCHEMA_PATH} differs: run --write-schema")
        return 0 if same else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
