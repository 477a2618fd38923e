"""``python -m exporters.formats --write-schema``: writes the manifest schema with every
registered format's section into toolkit/schemas/manifest.schema.json (after adding a
format), and the schema as plain Python into toolkit/bundle/_manifest_check.py (what
readers check a manifest with first, toolkit.bundle.schema_codegen); ``--check`` exits 1
when either file differs."""

from __future__ import annotations

import json
import sys

from exporters import formats
from toolkit.bundle import schema as schema_lib
from toolkit.bundle import schema_codegen


def main(argv: list[str]) -> int:
    data = formats.schema()
    text = json.dumps(data, indent=2) + "\n"
    # generated from the schema as readers parse it back
    code = schema_codegen.generate(json.loads(text))
    if argv == ["--write-schema"]:
        schema_lib.SCHEMA_PATH.write_text(text)
        schema_codegen.MODULE_PATH.write_text(code)
        return 0
    if argv == ["--check"]:
        stale = [
            str(path)
            for path, content in (
                (schema_lib.SCHEMA_PATH, text),
                (schema_codegen.MODULE_PATH, code),
            )
            if not path.exists() or path.read_text() != content
        ]
        print(f"{', '.join(stale)} differ: run --write-schema" if stale else "up to date")
        return 1 if stale else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
